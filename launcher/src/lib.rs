//! Runs processes in containers (see ARCHITECTURE.md).
