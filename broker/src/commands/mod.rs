//! The one-shot subcommands (`check-config`, `doctor`, `audit`): they read, print and exit;
//! none of them serves a client.
#![forbid(unsafe_code)]

pub mod doctor;
