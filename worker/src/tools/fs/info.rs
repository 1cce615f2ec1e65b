//! Metadata: `get_file_info` (statx, dates formatted like the reference's JavaScript) and
//! `list_allowed_directories`. Reads no file contents. Trusts `Roots` to resolve the path.

use rustix::fs::{self as rfs, AtFlags, FileType, StatxFlags};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse, Outcome, PathArgs};
use crate::tools::paths::{Access, PathError};
use crate::tools::{text_result, ToolContext};

/// Days since 1970-01-01 to (year, month 1-12, day 1-31) (proleptic Gregorian).
pub(super) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub(super) struct Civil {
    year: i64,
    month: u32,
    day: u32,
    weekday: usize,
    h: i64,
    mi: i64,
    s: i64,
}

pub(super) fn civil(secs: i64) -> Civil {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    Civil {
        year,
        month,
        day,
        weekday: usize::try_from((days + 4).rem_euclid(7)).unwrap_or(0),
        h: rem / 3600,
        mi: rem % 3600 / 60,
        s: rem % 60,
    }
}

/// A time the way JavaScript's `Date.prototype.toString` shows it (in UTC).
pub(super) fn js_date_string(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = civil(secs);
    format!(
        "{} {} {:02} {:04} {:02}:{:02}:{:02} GMT+0000 (Coordinated Universal Time)",
        DAYS[c.weekday % 7],
        MONTHS[(c.month as usize + 11) % 12],
        c.day,
        c.year,
        c.h,
        c.mi,
        c.s
    )
}

/// ISO 8601 with milliseconds, like `Date.prototype.toISOString`.
pub(super) fn iso_date(secs: i64, nanos: u32) -> String {
    let c = civil(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year,
        c.month,
        c.day,
        c.h,
        c.mi,
        c.s,
        nanos / 1_000_000
    )
}

pub(super) fn get_file_info(ctx: &ToolContext, args: Value) -> Outcome {
    let a: PathArgs = parse("get_file_info", args)?;
    let fd = ctx.roots.open_path(&a.path, Access::Read)?;
    let sx = rfs::statx(
        &fd,
        "",
        AtFlags::EMPTY_PATH,
        StatxFlags::BASIC_STATS | StatxFlags::BTIME,
    )
    .map_err(|e| PathError::io(&a.path, e))?;
    let ft = FileType::from_raw_mode(u32::from(sx.stx_mode) as _);
    let (bsec, bnsec) = if sx.stx_mask & StatxFlags::BTIME.bits() != 0 {
        (sx.stx_btime.tv_sec, sx.stx_btime.tv_nsec)
    } else {
        (0, 0)
    };
    let times = [
        ("created", bsec, bnsec),
        ("modified", sx.stx_mtime.tv_sec, sx.stx_mtime.tv_nsec),
        ("accessed", sx.stx_atime.tv_sec, sx.stx_atime.tv_nsec),
    ];
    let perms = format!("{:03o}", sx.stx_mode & 0o777);
    let is_dir = ft == FileType::Directory;
    let is_file = ft == FileType::RegularFile;
    let mut lines = vec![format!("size: {}", sx.stx_size)];
    for (k, s, _) in &times {
        lines.push(format!("{k}: {}", js_date_string(*s)));
    }
    lines.push(format!("isDirectory: {is_dir}"));
    lines.push(format!("isFile: {is_file}"));
    lines.push(format!("permissions: {perms}"));
    let content = lines.join("\n");
    let structured = json!({
        "content": content,
        "size": sx.stx_size,
        "created": iso_date(times[0].1, times[0].2),
        "modified": iso_date(times[1].1, times[1].2),
        "accessed": iso_date(times[2].1, times[2].2),
        "isDirectory": is_dir,
        "isFile": is_file,
        "permissions": perms,
    });
    let mut r = text_result(content);
    r.structured_json = Some(structured.to_string());
    Ok(r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NoArgs {}

pub(super) fn list_allowed_directories(ctx: &ToolContext, args: Value) -> Outcome {
    let _: NoArgs = parse("list_allowed_directories", args)?;
    let list = ctx.roots.list();
    let content = format!(
        "Allowed directories:\n{}",
        list.iter()
            .map(|r| r.path.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let dirs: Vec<Value> = list
        .iter()
        .map(|r| json!({"path": r.path, "writable": r.writable}))
        .collect();
    let structured = json!({"content": content, "directories": dirs});
    let mut r = text_result(content);
    r.structured_json = Some(structured.to_string());
    Ok(r)
}
