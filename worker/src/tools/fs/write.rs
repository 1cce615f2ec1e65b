//! Write tools that change the tree: `write_file`, `create_directory`, `move_file` (never
//! onto an existing name: `RENAME_NOREPLACE`, else a check first) and `delete_file`. Does not
//! edit contents (see `edit`). Trusts `Roots` to resolve every path beneath a write
//! root; the kernel sandbox is the backstop.

use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{self as rfs, AtFlags, FileType};
use rustix::io::Errno;
use serde::Deserialize;
use serde_json::Value;

use super::{parse, Fail, Outcome, PathArgs};
use crate::tools::paths::{self, Access, PathError};
use crate::tools::{text_result, ToolContext};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WriteArgs {
    path: String,
    content: String,
}

pub(super) fn write_file(ctx: &ToolContext, args: Value) -> Outcome {
    let a: WriteArgs = parse("write_file", args)?;
    ctx.roots.write_file(&a.path, a.content.as_bytes())?;
    Ok(text_result(format!("Successfully wrote to {}", a.path)))
}

pub(super) fn create_directory(ctx: &ToolContext, args: Value) -> Outcome {
    let a: PathArgs = parse("create_directory", args)?;
    ctx.roots.create_dir_all(&a.path)?;
    Ok(text_result(format!(
        "Successfully created directory {}",
        a.path
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MoveArgs {
    source: String,
    destination: String,
}

pub(super) fn exists_at(dir: BorrowedFd<'_>, name: &str) -> bool {
    !matches!(
        rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW),
        Err(Errno::NOENT)
    )
}

pub(super) fn move_file(ctx: &ToolContext, args: Value) -> Outcome {
    let a: MoveArgs = parse("move_file", args)?;
    let src = ctx.roots.parent(&a.source, Access::Write)?;
    let dst = ctx.roots.parent(&a.destination, Access::Write)?;
    if src.is_root {
        return Err(Fail::Tool(format!(
            "Cannot move an allowed directory itself: {}",
            a.source
        )));
    }
    let exists = || Fail::Tool(format!("Destination already exists: {}", a.destination));
    if dst.is_root || exists_at(dst.dir.as_fd(), &dst.name) {
        return Err(exists());
    }
    let r = rfs::renameat_with(
        &src.dir,
        src.name.as_str(),
        &dst.dir,
        dst.name.as_str(),
        rfs::RenameFlags::NOREPLACE,
    );
    let r = match r {
        // File systems without RENAME_NOREPLACE: the existence check above has to do.
        Err(Errno::INVAL | Errno::NOSYS) => {
            if exists_at(dst.dir.as_fd(), &dst.name) {
                return Err(exists());
            }
            rfs::renameat(&src.dir, src.name.as_str(), &dst.dir, dst.name.as_str())
        }
        r => r,
    };
    match r {
        Ok(()) => Ok(text_result(format!(
            "Successfully moved {} to {}",
            a.source, a.destination
        ))),
        Err(Errno::EXIST) => Err(exists()),
        Err(e @ Errno::NOENT) => Err(PathError::io(&a.source, e).into()),
        Err(e) => Err(Fail::Tool(format!(
            "Cannot move {} to {}: {}",
            a.source,
            a.destination,
            paths::errno_text(e)
        ))),
    }
}

pub(super) fn delete_file(ctx: &ToolContext, args: Value) -> Outcome {
    let a: PathArgs = parse("delete_file", args)?;
    let p = ctx.roots.parent(&a.path, Access::Write)?;
    if p.is_root {
        return Err(Fail::Tool(format!(
            "Cannot delete an allowed directory itself: {}",
            a.path
        )));
    }
    let st = rfs::statat(&p.dir, p.name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| PathError::io(&a.path, e))?;
    let flags = if paths::file_type(&st) == FileType::Directory {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    rfs::unlinkat(&p.dir, p.name.as_str(), flags).map_err(|e| PathError::io(&a.path, e))?;
    Ok(text_result(format!("Successfully deleted {}", a.path)))
}
