//! `layertool`: import images into packed layers; inspect, verify and list them; commit and diff
//! upper directories.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use format_spec::{Kind, Layer, Segment, VerifyOptions};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tools::commit::{CommitOptions, CommitReport, ImageCommit, commit_image, commit_upper};
use tools::diff::diff_upper;
use tools::image::Image;
use tools::import::{ImportOptions, convert_file, import};
use tools::store::{Store, digest_string, parse_digest, sha256_file};
use tools::{MappedLayer, open_layer, show};

#[derive(Parser)]
#[command(name = "layertool", version, about = "Import images into packed layers; inspect, verify and list them")]
struct Cli {
    /// The store's root (default: /var/lib/layerfs for root, $XDG_DATA_HOME/layerfs otherwise).
    #[arg(long, global = true, env = "LAYERFS_ROOT")]
    root: Option<PathBuf>,
    /// No progress bar.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert one layer tarball (plain, .gz or .zst) into a self-contained packed layer.
    Convert {
        /// The layer tarball.
        input: PathBuf,
        /// The packed layer to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Import an image (root filesystem tarball, OCI layout, OCI archive or docker save archive).
    Import {
        /// The source.
        source: PathBuf,
        /// The image's name: NAME or NAME:TAG (the tag defaults to latest).
        #[arg(short, long)]
        tag: String,
        /// Files of at least this many bytes become shared objects (smaller stay in the layer).
        #[arg(long, default_value_t = 4096)]
        external_min: u64,
        /// Do not flush to disk before publishing the image (faster; a power loss during or just
        /// after the import can then leave a damaged image, which `verify` reports).
        #[arg(long)]
        no_sync: bool,
    },
    /// List images.
    Images {
        /// Only print image names.
        #[arg(long = "names")]
        names: bool,
    },
    /// Remove images, then the layers and objects nothing references any more.
    Rmi {
        /// Images to remove.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove layers and objects that no image references.
    Gc,
    /// Show a packed layer's header, sections and counts, or an image's layers.
    Inspect {
        /// A .lpk file or an image name.
        target: String,
    },
    /// List a directory of a packed layer, like ls -l (whiteouts shown as such).
    Ls {
        /// A .lpk file.
        file: PathBuf,
        /// Directory (or entry) inside the layer.
        #[arg(default_value = "/")]
        path: String,
        /// List subdirectories recursively.
        #[arg(short = 'R', long)]
        recursive: bool,
    },
    /// Write a file of a packed layer to standard output.
    Cat {
        /// A .lpk file.
        file: PathBuf,
        /// Path of a regular file inside the layer.
        path: String,
    },
    /// Write an image's merged root filesystem as a tar (docker/podman import accept it).
    Export {
        /// The image.
        image: String,
        /// The tar to write ("-" for standard output).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Write an image as an OCI image layout archive (podman load, skopeo and import accept it).
    Save {
        /// The image.
        image: String,
        /// The archive to write ("-" for standard output).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Squash an image's layers into one packed layer, as a new image.
    Flatten {
        /// The image.
        image: String,
        /// The new image's name: NAME or NAME:TAG.
        name: String,
    },
    /// Commit an upper directory (layerfs or kernel overlayfs) as a new layer: a new image in the
    /// store (--tag), or a self-contained .lpk file (-o).
    Commit {
        /// The upper directory.
        upper: PathBuf,
        /// Write a self-contained packed layer to this file (nothing is stored).
        #[arg(short, long, required_unless_present = "tag", conflicts_with_all = ["tag", "changes", "message"])]
        output: Option<PathBuf>,
        /// The image the upper was mounted over: the new image's lower layers and starting
        /// configuration; with -o, needed only for renamed directories and metadata-only copies.
        #[arg(long)]
        base: Option<String>,
        /// The new image's name: NAME or NAME:TAG.
        #[arg(short, long)]
        tag: Option<String>,
        /// A configuration change, Dockerfile syntax: CMD, ENTRYPOINT (JSON or shell form), ENV,
        /// LABEL, USER, WORKDIR (repeatable).
        #[arg(short = 'c', long = "change")]
        changes: Vec<String>,
        /// A commit message.
        #[arg(short, long)]
        message: Option<String>,
        /// Files of at least this many bytes become shared objects (with --tag).
        #[arg(long, default_value_t = 4096)]
        external_min: u64,
        /// Do not flush to disk before publishing (faster; a power loss may then damage the image).
        #[arg(long)]
        no_sync: bool,
    },
    /// List what an upper directory changes in the image it was mounted over (A, C, D lines).
    Diff {
        /// The upper directory.
        upper: PathBuf,
        /// The image the upper was mounted over.
        #[arg(long)]
        base: Option<String>,
    },
    /// Check every checksum and invariant of a packed layer or of an image (and its objects).
    Verify {
        /// A .lpk file or an image name.
        target: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("layertool: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress(quiet: bool, prefix: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
        )
        .expect("valid template"),
    );
    pb.set_prefix(prefix.to_string());
    pb
}

fn store_of(cli_root: &Option<PathBuf>) -> PathBuf {
    cli_root.clone().unwrap_or_else(Store::default_root)
}

fn human(bytes: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", units[i]) }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Convert { input, output } => {
            let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let tmp = tempfile::Builder::new()
                .prefix(".layertool-")
                .tempfile_in(dir)
                .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
            let pb = progress(cli.quiet, "convert");
            let file = tmp.as_file().try_clone()?;
            let (report, summary) =
                convert_file(&input, file, &pb).with_context(|| format!("converting {}", input.display()))?;
            pb.finish_and_clear();
            tmp.as_file().sync_all()?;
            fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o444))?;
            tmp.persist(&output).with_context(|| format!("writing {}", output.display()))?;
            print_warnings(&report.warnings);
            println!(
                "{}: {} entries, {} inodes, {} data, {} deduplicated files, {} bytes",
                output.display(),
                report.entries,
                summary.inodes,
                human(summary.inline_bytes),
                summary.deduplicated,
                summary.file_size
            );
        }
        Cmd::Import { source, tag, external_min, no_sync } => {
            let store = Store::open(store_of(&cli.root))?;
            let pb = progress(cli.quiet, "import");
            let report = import(&store, &source, &tag, &ImportOptions { external_min, sync: !no_sync }, &pb)
                .with_context(|| format!("importing {}", source.display()))?;
            pb.finish_and_clear();
            for (i, l) in report.layers.iter().enumerate() {
                if let Some(c) = &l.convert {
                    print_warnings(&c.warnings);
                }
                let what = match (&l.convert, &l.summary) {
                    (Some(c), Some(s)) => format!(
                        "{} entries, {} inline, {} in objects, {} deduplicated files",
                        c.entries,
                        human(s.inline_bytes),
                        human(s.external_bytes),
                        s.deduplicated
                    ),
                    _ => "converted before".into(),
                };
                let state = if l.new { "new" } else { "already stored" };
                println!("layer {}/{} {} {state}: {what}", i + 1, report.layers.len(), digest_string(&l.digest));
            }
            println!("{} {}", report.image.name, report.image.id());
        }
        Cmd::Images { names } => {
            let root = store_of(&cli.root);
            let images = match Store::open_existing(&root) {
                Ok(s) => s.images()?,
                Err(_) => Vec::new(),
            };
            if names {
                for i in &images {
                    println!("{}", i.name);
                }
            } else {
                let store = Store::open_existing(&root).ok();
                println!("{:<40} {:<14} {:>6} {:>10}  CREATED", "IMAGE", "ID", "LAYERS", "SIZE");
                for i in &images {
                    let size: u64 = store.as_ref().map(|s| image_layer_bytes(s, i)).unwrap_or(0);
                    println!(
                        "{:<40} {:<14} {:>6} {:>10}  {}",
                        i.name,
                        &i.id_hex()[..12],
                        i.layers.len(),
                        human(size),
                        i.created.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        Cmd::Rmi { images } => {
            let store = Store::open_existing(store_of(&cli.root))?;
            let _lock = store.lock_exclusive()?;
            let mut failed = false;
            for name in &images {
                match store.remove_image(name) {
                    Ok(img) => println!("Untagged: {}", img.name),
                    Err(e) => {
                        eprintln!("layertool: {e}");
                        failed = true;
                    }
                }
            }
            let gc = store.collect_garbage()?;
            println!("Deleted: {} layers, {} objects, {}", gc.layers, gc.objects, human(gc.bytes));
            if gc.leased > 0 {
                println!("Kept: {} layers still used by running mounts", gc.leased);
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Gc => {
            let store = Store::open_existing(store_of(&cli.root))?;
            let _lock = store.lock_exclusive()?;
            let gc = store.collect_garbage()?;
            println!("Deleted: {} layers, {} objects, {}", gc.layers, gc.objects, human(gc.bytes));
        }
        Cmd::Inspect { target } => {
            if Path::new(&target).exists() {
                inspect_layer(Path::new(&target))?;
            } else {
                let store = Store::open_existing(store_of(&cli.root))?;
                let img = store.image(&target)?;
                println!("{}", serde_json::to_string_pretty(&img)?);
                for l in &img.layers {
                    let d = parse_digest(l).ok_or_else(|| anyhow!("bad layer digest {l}"))?;
                    println!();
                    println!("layer {l}");
                    inspect_layer(&store.layer_path(&d))?;
                }
            }
        }
        Cmd::Ls { file, path, recursive } => {
            let layer = open_layer(&file).with_context(|| format!("opening {}", file.display()))?;
            let inode = resolve(&layer, &path)?;
            let mut out = io::BufWriter::new(io::stdout().lock());
            ls(&layer, inode, &path, recursive, &mut out)?;
            out.flush()?;
        }
        Cmd::Cat { file, path } => {
            let layer = open_layer(&file).with_context(|| format!("opening {}", file.display()))?;
            let inode = resolve(&layer, &path)?;
            if inode.kind() != Kind::File {
                bail!("{path}: not a regular file");
            }
            let mut out = io::stdout().lock();
            if inode.is_external() {
                let store = Store::open_existing(store_of(&cli.root))?;
                let d = layer.digest(&inode)?.ok_or_else(|| anyhow!("{path}: external file without a digest"))?;
                let p = store.object_path(d);
                let mut f = File::open(&p).with_context(|| format!("{path}: opening object {}", p.display()))?;
                io::copy(&mut f, &mut out)?;
            } else {
                for seg in layer.read_segments(&inode, 0, inode.size)? {
                    match seg {
                        Segment::Data(d) => out.write_all(d)?,
                        Segment::Zeros(z) => io::copy(&mut io::Read::take(io::repeat(0), z), &mut out).map(drop)?,
                    }
                }
            }
            out.flush()?;
        }
        Cmd::Export { image, output } => {
            let store = Store::open_existing(store_of(&cli.root))?;
            let img = store.image(&image)?;
            let layers = tools::open_image_layers(&store, &img)?;
            let top_first: Vec<&MappedLayer> = layers.iter().rev().collect();
            let stats = write_output(&output, |w| tools::export::export_merged(&top_first, Some(&store), w))
                .with_context(|| format!("exporting {image}"))?;
            for s in &stats.skipped {
                eprintln!("warning: {s}: a socket cannot be stored in a tar; skipped");
            }
            eprintln!("{}: {} entries, {}", output.display(), stats.entries, human(stats.bytes));
        }
        Cmd::Save { image, output } => {
            let store = Store::open(store_of(&cli.root))?;
            let img = store.image(&image)?;
            write_output(&output, |w| tools::export::save_oci_archive(&store, &img, w).map(|w| (w, ())))
                .with_context(|| format!("saving {image}"))?;
            eprintln!("{}: {} as an OCI archive ({} layers)", output.display(), img.name, img.layers.len());
        }
        Cmd::Flatten { image, name } => {
            let store = Store::open(store_of(&cli.root))?;
            let _lock = store.lock_shared()?;
            let img = store.image(&image)?;
            let layers = tools::open_image_layers(&store, &img)?;
            let top_first: Vec<&MappedLayer> = layers.iter().rev().collect();
            let (file, tmp) = store.temp_file(".layer-")?;
            let out = file.try_clone()?;
            let res = tools::export::flatten(&top_first, &store, out, format_spec::WriterOptions::default());
            let summary = match res {
                Ok(s) => s,
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(e).with_context(|| format!("flattening {image}"));
                }
            };
            file.sync_all()?;
            let digest = sha256_file(&tmp)?;
            store.publish_layer(&tmp, &digest)?;
            let new = Image {
                name: tools::image::ImageRef::parse(&name)?.to_string(),
                layers: vec![digest_string(&digest)],
                diff_ids: Vec::new(),
                config: img.config.clone(),
                created: img.created.clone(),
                source: format!("flatten of {}", img.name),
                comment: None,
            };
            store.sync()?;
            store.save_image(&new)?;
            println!("{} {} ({} inodes, {} layers squashed)", new.name, new.id(), summary.inodes, img.layers.len());
        }
        Cmd::Commit { upper, output, base, tag, changes, message, external_min, no_sync } => {
            let opts = CommitOptions { external_min, self_contained: output.is_some(), sync: !no_sync };
            let pb = progress(cli.quiet, "commit");
            if let Some(output) = output {
                let store = match &base {
                    Some(_) => Some(Store::open_existing(store_of(&cli.root))?),
                    None => None,
                };
                let _lock = store.as_ref().map(Store::lock_shared).transpose()?;
                let img = match (&store, &base) {
                    (Some(s), Some(b)) => Some(s.image(b)?),
                    _ => None,
                };
                let layers = match (&store, &img) {
                    (Some(s), Some(i)) => tools::open_image_layers(s, i)?,
                    _ => Vec::new(),
                };
                let top_first: Vec<&MappedLayer> = layers.iter().rev().collect();
                let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let tmp = tempfile::Builder::new()
                    .prefix(".layertool-")
                    .tempfile_in(dir)
                    .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
                let file = tmp.as_file().try_clone()?;
                let report = commit_upper(&upper, &top_first, store.as_ref(), file, &opts, &pb)
                    .with_context(|| format!("committing {}", upper.display()))?;
                pb.finish_and_clear();
                if !no_sync {
                    tmp.as_file().sync_all()?;
                }
                fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o444))?;
                tmp.persist(&output).with_context(|| format!("writing {}", output.display()))?;
                print_commit(&report);
                println!("{}: {} bytes", output.display(), report.summary.file_size);
            } else {
                let tag = tag.expect("clap requires --tag without -o");
                let store = Store::open(store_of(&cli.root))?;
                let img = base.as_deref().map(|b| store.image(b)).transpose()?;
                let req =
                    ImageCommit { base: img.as_ref(), name: &tag, changes: &changes, message: message.as_deref() };
                let r = commit_image(&store, &upper, &req, &opts, &pb)
                    .with_context(|| format!("committing {}", upper.display()))?;
                pb.finish_and_clear();
                print_commit(&r.commit);
                let state = if r.new_layer { "new" } else { "already stored" };
                println!("layer {} {state}", digest_string(&r.layer));
                println!("{} {}", r.image.name, r.image.id());
            }
        }
        Cmd::Diff { upper, base } => {
            let store = match &base {
                Some(_) => Some(Store::open_existing(store_of(&cli.root))?),
                None => None,
            };
            let layers = match (&store, &base) {
                (Some(s), Some(b)) => tools::open_image_layers(s, &s.image(b)?)?,
                _ => Vec::new(),
            };
            let top_first: Vec<&MappedLayer> = layers.iter().rev().collect();
            let changes = diff_upper(&upper, &top_first).with_context(|| format!("comparing {}", upper.display()))?;
            let mut out = io::BufWriter::new(io::stdout().lock());
            for c in &changes {
                out.write_all(&[c.kind.letter() as u8, b' '])?;
                out.write_all(&c.path)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
        Cmd::Verify { target } => {
            let ok = if Path::new(&target).exists() {
                let store = Store::open_existing(store_of(&cli.root)).ok();
                verify_layer(Path::new(&target), store.as_ref())
            } else {
                let store = Store::open_existing(store_of(&cli.root))?;
                let img = store.image(&target)?;
                let mut ok = true;
                for l in &img.layers {
                    let d = parse_digest(l).ok_or_else(|| anyhow!("bad layer digest {l}"))?;
                    let p = store.layer_path(&d);
                    match sha256_file(&p) {
                        Ok(actual) if actual == d => {}
                        Ok(actual) => {
                            println!("{}: content digest is {}, not its name", p.display(), digest_string(&actual));
                            ok = false;
                            continue;
                        }
                        Err(e) => {
                            println!("{}: {e}", p.display());
                            ok = false;
                            continue;
                        }
                    }
                    ok &= verify_layer(&p, Some(&store));
                }
                ok
            };
            if !ok {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `f` on the output file (written atomically) or on standard output for "-".
fn write_output<T>(
    output: &Path,
    f: impl FnOnce(Box<dyn Write>) -> std::result::Result<(Box<dyn Write>, T), tools::ImportError>,
) -> Result<T> {
    if output == Path::new("-") {
        let (mut w, t) = f(Box::new(io::BufWriter::with_capacity(1 << 20, io::stdout().lock())))?;
        w.flush()?;
        return Ok(t);
    }
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new().prefix(".layertool-").tempfile_in(dir)?;
    let file = tmp.as_file().try_clone()?;
    let (mut w, t) = f(Box::new(io::BufWriter::with_capacity(1 << 20, file)))?;
    w.flush()?;
    drop(w);
    tmp.as_file().sync_all()?;
    tmp.persist(output).with_context(|| format!("writing {}", output.display()))?;
    Ok(t)
}

fn print_commit(r: &CommitReport) {
    print_warnings(&r.warnings);
    eprintln!(
        "{} upper entries ({} whiteouts, {} renamed dirs, {} metadata-only), {} from the base, {} links kept; \
         {} inodes, {} inline, {} in objects, {} deduplicated files",
        r.upper_entries,
        r.whiteouts,
        r.redirects,
        r.metacopies,
        r.materialised,
        r.carried_links,
        r.summary.inodes,
        human(r.summary.inline_bytes),
        human(r.summary.external_bytes),
        r.summary.deduplicated
    );
}

fn print_warnings(w: &[String]) {
    for line in w.iter().take(20) {
        eprintln!("warning: {line}");
    }
    if w.len() > 20 {
        eprintln!("warning: ... and {} more", w.len() - 20);
    }
}

fn image_layer_bytes(store: &Store, img: &Image) -> u64 {
    img.layers
        .iter()
        .filter_map(|l| parse_digest(l))
        .filter_map(|d| fs::metadata(store.layer_path(&d)).ok())
        .map(|m| m.len())
        .sum()
}

fn resolve(layer: &MappedLayer, path: &str) -> Result<format_spec::Inode> {
    let mut cur = layer.inode(layer.root())?;
    for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        let ent = layer
            .lookup(&cur, c.as_bytes())?
            .ok_or_else(|| anyhow!("{path}: no such file or directory in the layer"))?;
        if ent.kind == Kind::Whiteout {
            bail!("{path}: is a whiteout (deleted in this layer)");
        }
        cur = layer.inode(ent.ino)?;
    }
    Ok(cur)
}

fn ls(layer: &MappedLayer, dir: format_spec::Inode, path: &str, recursive: bool, out: &mut impl Write) -> Result<()> {
    if !dir.is_dir() {
        writeln!(out, "{}", show::mode_string(dir.kind(), dir.mode) + &format!(" {} {path}", dir.size))?;
        return Ok(());
    }
    if recursive {
        writeln!(out, "{path}:")?;
    }
    let mut subdirs = Vec::new();
    for ent in layer.read_dir(&dir, 0)? {
        let ent = ent?;
        writeln!(out, "{}", show::ls_line(layer, &ent))?;
        if recursive && ent.kind == Kind::Dir {
            subdirs.push((String::from_utf8_lossy(ent.name).into_owned(), ent.ino));
        }
    }
    for (name, ino) in subdirs {
        writeln!(out)?;
        let child = format!("{}/{name}", path.trim_end_matches('/'));
        ls(layer, layer.inode(ino)?, &child, true, out)?;
    }
    Ok(())
}

fn inspect_layer(path: &Path) -> Result<()> {
    let size = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    let layer = open_layer(path).with_context(|| format!("opening {}", path.display()))?;
    let h = layer.header().clone();
    println!("file:            {} ({} bytes)", path.display(), size);
    println!("format:          {}.{}", h.version_major, h.version_minor);
    let mut feats = Vec::new();
    if h.incompat & format_spec::raw::INCOMPAT_EXTERNAL_DATA != 0 {
        feats.push("external-data");
    }
    if h.compat & format_spec::raw::COMPAT_TIMES != 0 {
        feats.push("times");
    }
    println!(
        "features:        {} (incompat {:#x}, ro_compat {:#x}, compat {:#x})",
        if feats.is_empty() { "none".into() } else { feats.join(", ") },
        h.incompat,
        h.ro_compat,
        h.compat
    );
    if h.source_digest != [0; 32] {
        println!("source diff_id:  {}", digest_string(&h.source_digest));
    }
    println!("data area:       {} .. {} ({})", h.data_start, h.data_end, human(h.data_end - h.data_start));
    println!("sections:");
    for id in format_spec::raw::SectionId::ALL {
        let s = h.sections[id as usize];
        println!(
            "  {:<14} offset {:>12} length {:>10} count {:>8} crc32 {:#010x}",
            id.name(),
            s.offset,
            s.length,
            s.count,
            s.crc32
        );
    }
    let st = layer.verify(VerifyOptions { data: false })?;
    println!(
        "entries:         {} inodes: {} directories ({} opaque), {} files ({} in objects), {} symlinks, {} special",
        st.inodes, st.dirs, st.opaque_dirs, st.files, st.external_files, st.symlinks, st.specials
    );
    println!(
        "                 {} names, {} whiteouts, {} extra hard links, {} with xattrs",
        st.dirents, st.whiteouts, st.hardlinks, st.with_xattrs
    );
    println!(
        "file data:       {} in files, {} stored in the layer ({} extents)",
        human(st.file_bytes),
        human(st.stored_bytes),
        st.extents
    );
    Ok(())
}

/// Verifies one layer file (and its objects, given a store). Prints what is wrong; true if fine.
fn verify_layer(path: &Path, store: Option<&Store>) -> bool {
    let layer: Layer<_> = match open_layer(path) {
        Ok(l) => l,
        Err(e) => {
            println!("{}: {e}", path.display());
            return false;
        }
    };
    let stats = match layer.verify(VerifyOptions { data: true }) {
        Ok(s) => s,
        Err(e) => {
            println!("{}: {e}", path.display());
            return false;
        }
    };
    let mut ok = true;
    if stats.external_files > 0 {
        let Some(store) = store else {
            println!(
                "{}: {} files keep their data in objects, and no store was found",
                path.display(),
                stats.external_files
            );
            return false;
        };
        let externals = match layer.external_files() {
            Ok(x) => x,
            Err(e) => {
                println!("{}: {e}", path.display());
                return false;
            }
        };
        let mut seen = std::collections::HashSet::new();
        for (inode, d) in externals {
            if !seen.insert(d) {
                continue;
            }
            let p = store.object_path(&d);
            match (fs::metadata(&p), sha256_file(&p)) {
                (Ok(m), Ok(actual)) if actual == d && m.len() == inode.size => {}
                (Ok(m), Ok(actual)) => {
                    println!(
                        "{}: inode {}: object {} is corrupt (digest {}, {} bytes, expected {} bytes)",
                        path.display(),
                        inode.ino,
                        p.display(),
                        digest_string(&actual),
                        m.len(),
                        inode.size
                    );
                    ok = false;
                }
                (Err(e), _) | (_, Err(e)) => {
                    println!("{}: inode {}: object {}: {e}", path.display(), inode.ino, p.display());
                    ok = false;
                }
            }
        }
    }
    if ok {
        println!(
            "{}: ok ({} inodes, {} extents, {} objects checked)",
            path.display(),
            stats.inodes,
            stats.extents,
            stats.external_files
        );
    }
    ok
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
