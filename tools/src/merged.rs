//! The merged, read-only view of an image's packed layers (no upper directory): what a container
//! sees at start. Used by `export`, `flatten` and `diff`.
//!
//! Overlay rules: the topmost layer that names an entry wins; a whiteout hides the name in the
//! layers below; a directory merges with the same-named directories below it down to the first
//! opaque one (or the first layer where the name is not a directory). Directory entries of every
//! layer are sorted, so listing a merged directory is a k-way merge with no hashing.

use std::collections::BTreeMap;

use format_spec::{FormatError, Inode, Kind};

use crate::MappedLayer;

/// A node of the merged view: the layer (index, 0 = top) and inode that provide it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source {
    /// Index of the layer in the stack, 0 = topmost.
    pub layer: usize,
    /// Inode number in that layer.
    pub ino: u32,
}

/// A merged directory: the directories that make it up, topmost first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedDir {
    /// Contributing directories, topmost first; the last one is opaque or the lowest.
    pub parts: Vec<Source>,
}

/// An entry of a merged directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedEntry {
    /// The name.
    pub name: Vec<u8>,
    /// Its type.
    pub kind: Kind,
    /// Where it comes from (for a directory: its topmost part).
    pub source: Source,
    /// For a directory: all its parts.
    pub dir: Option<MergedDir>,
}

/// A stack of layers, topmost first.
pub struct MergedView<'a> {
    layers: Vec<&'a MappedLayer>,
}

impl<'a> MergedView<'a> {
    /// A view over `layers`, topmost first.
    pub fn new(layers: Vec<&'a MappedLayer>) -> Self {
        MergedView { layers }
    }

    /// The layers, topmost first.
    pub fn layers(&self) -> &[&'a MappedLayer] {
        &self.layers
    }

    /// The inode behind `s`.
    pub fn inode(&self, s: Source) -> Result<Inode, FormatError> {
        self.layers[s.layer].inode(s.ino)
    }

    /// The merged root directory.
    pub fn root(&self) -> Result<MergedDir, FormatError> {
        let mut parts = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            parts.push(Source { layer: i, ino: l.root() });
            if l.inode(l.root())?.is_opaque() {
                break;
            }
        }
        Ok(MergedDir { parts })
    }

    /// The entries of merged directory `dir`, sorted by name, whiteouts applied.
    pub fn read_dir(&self, dir: &MergedDir) -> Result<Vec<MergedEntry>, FormatError> {
        // name -> (decided entry, or hidden by a whiteout / non-directory above)
        let mut merged: BTreeMap<Vec<u8>, Option<MergedEntry>> = BTreeMap::new();
        for part in &dir.parts {
            let layer = self.layers[part.layer];
            let inode = layer.inode(part.ino)?;
            for ent in layer.read_dir(&inode, 0)? {
                let ent = ent?;
                match merged.get_mut(ent.name) {
                    None => {
                        let val = if ent.kind == Kind::Whiteout {
                            None
                        } else {
                            let source = Source { layer: part.layer, ino: ent.ino };
                            let dir = (ent.kind == Kind::Dir).then(|| MergedDir { parts: vec![source] });
                            Some(MergedEntry { name: ent.name.to_vec(), kind: ent.kind, source, dir })
                        };
                        merged.insert(ent.name.to_vec(), val);
                    }
                    Some(Some(MergedEntry { dir: Some(d), .. })) => {
                        // A directory above: this layer continues it unless the chain has ended
                        // (an opaque part, or a whiteout or non-directory in between).
                        let last = *d.parts.last().expect("a dir has a part");
                        if last.layer == usize::MAX || self.inode(last)?.is_opaque() {
                            continue;
                        }
                        if ent.kind == Kind::Dir {
                            d.parts.push(Source { layer: part.layer, ino: ent.ino });
                        } else {
                            d.parts.push(Source { layer: usize::MAX, ino: 0 });
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(merged
            .into_values()
            .flatten()
            .map(|mut e| {
                if let Some(d) = &mut e.dir
                    && let Some(pos) = d.parts.iter().position(|s| s.layer == usize::MAX)
                {
                    d.parts.truncate(pos);
                }
                e
            })
            .collect())
    }

    /// Resolves a path (components separated by `/`) to its entry, without following symlinks.
    pub fn lookup(&self, path: &[u8]) -> Result<Option<MergedEntry>, FormatError> {
        let mut dir = self.root()?;
        let mut found: Option<MergedEntry> = None;
        for comp in path.split(|&c| c == b'/').filter(|c| !c.is_empty() && *c != b".") {
            if found.as_ref().is_some_and(|f| f.dir.is_none()) {
                return Ok(None);
            }
            if let Some(f) = &found {
                dir = f.dir.clone().expect("checked above");
            }
            found = self.lookup_in(&dir, comp)?;
            if found.is_none() {
                return Ok(None);
            }
        }
        Ok(found)
    }

    /// Looks one name up in a merged directory.
    pub fn lookup_in(&self, dir: &MergedDir, name: &[u8]) -> Result<Option<MergedEntry>, FormatError> {
        let mut result: Option<MergedEntry> = None;
        for part in &dir.parts {
            let layer = self.layers[part.layer];
            let inode = layer.inode(part.ino)?;
            let Some(ent) = layer.lookup(&inode, name)? else { continue };
            match &mut result {
                None => {
                    if ent.kind == Kind::Whiteout {
                        return Ok(None);
                    }
                    let source = Source { layer: part.layer, ino: ent.ino };
                    let dir = (ent.kind == Kind::Dir).then(|| MergedDir { parts: vec![source] });
                    let is_dir = dir.is_some();
                    result = Some(MergedEntry { name: name.to_vec(), kind: ent.kind, source, dir });
                    if !is_dir || layer.inode(ent.ino)?.is_opaque() {
                        break;
                    }
                }
                Some(MergedEntry { dir: Some(d), .. }) => {
                    if ent.kind != Kind::Dir {
                        break;
                    }
                    d.parts.push(Source { layer: part.layer, ino: ent.ino });
                    if layer.inode(ent.ino)?.is_opaque() {
                        break;
                    }
                }
                Some(_) => break,
            }
        }
        Ok(result)
    }
}

/// Every name of the inodes `inos` in one layer, as paths relative to its root (sorted), found by
/// one pass over the layer's directories (no tree walk, no path built for other entries). Used to
/// keep a lower hard-link group linked when one of its members is copied up.
pub fn names_of_inodes(
    layer: &MappedLayer,
    inos: &std::collections::BTreeSet<u32>,
) -> Result<BTreeMap<u32, Vec<Vec<u8>>>, FormatError> {
    let mut hits: Vec<(u32, Vec<u8>, u32)> = Vec::new();
    for dino in 1..=layer.inode_count() {
        let dir = layer.inode(dino)?;
        if !dir.is_dir() {
            continue;
        }
        for ent in layer.read_dir(&dir, 0)? {
            let ent = ent?;
            if ent.kind == Kind::File && inos.contains(&ent.ino) {
                hits.push((dino, ent.name.to_vec(), ent.ino));
            }
        }
    }
    let mut dir_paths: std::collections::HashMap<u32, Vec<u8>> = std::collections::HashMap::new();
    dir_paths.insert(layer.root(), Vec::new());
    let mut out: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    for (dino, name, ino) in hits {
        let mut p = dir_path(layer, dino, &mut dir_paths)?;
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(&name);
        out.entry(ino).or_default().push(p);
    }
    for v in out.values_mut() {
        v.sort();
    }
    Ok(out)
}

/// The path of directory `dino` in its layer, through the `parent` fields (memoised).
fn dir_path(
    layer: &MappedLayer,
    dino: u32,
    memo: &mut std::collections::HashMap<u32, Vec<u8>>,
) -> Result<Vec<u8>, FormatError> {
    let mut chain = Vec::new();
    let mut cur = dino;
    while !memo.contains_key(&cur) {
        chain.push(cur);
        if chain.len() > 1 << 16 {
            return Err(FormatError::BadTree { ino: dino, reason: "parent chain does not reach the root" });
        }
        cur = layer.inode(cur)?.parent;
    }
    while let Some(d) = chain.pop() {
        let inode = layer.inode(d)?;
        let parent = layer.inode(inode.parent)?;
        let mut name = None;
        for ent in layer.read_dir(&parent, 0)? {
            let ent = ent?;
            if ent.ino == d && ent.kind == Kind::Dir {
                name = Some(ent.name.to_vec());
                break;
            }
        }
        let name = name.ok_or(FormatError::BadTree { ino: d, reason: "directory not named by its parent" })?;
        let mut p = memo[&inode.parent].clone();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(&name);
        memo.insert(d, p);
    }
    Ok(memo[&dino].clone())
}
