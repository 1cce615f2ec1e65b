# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_mcpd_global_optspecs
    string join \n h/help V/version
end

function __fish_mcpd_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_mcpd_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_mcpd_using_subcommand
    set -l cmd (__fish_mcpd_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c mcpd -n "__fish_mcpd_needs_command" -s h -l help -d 'Print help'
complete -c mcpd -n "__fish_mcpd_needs_command" -s V -l version -d 'Print version'
complete -c mcpd -n "__fish_mcpd_needs_command" -f -a "serve" -d 'Serve MCP. With no flags and no config: stdio, current directory read-only'
complete -c mcpd -n "__fish_mcpd_needs_command" -f -a "check-config" -d 'Validate a configuration file and print the effective policy'
complete -c mcpd -n "__fish_mcpd_needs_command" -f -a "doctor" -d 'Print what this kernel offers for confinement, and what each client\'s worker view will hold (the embedded default, or --config)'
complete -c mcpd -n "__fish_mcpd_needs_command" -f -a "audit" -d 'Read and verify the audit log'
complete -c mcpd -n "__fish_mcpd_needs_command" -f -a "completions" -d 'Print the shell completion script for SHELL on stdout'
complete -c mcpd -n "__fish_mcpd_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l http -d 'Serve Streamable HTTP on ADDR (127.0.0.1:8080, [::1]:8080, or localhost:8080 for both), endpoint /mcp. Loopback only unless --insecure-non-loopback-without-auth' -r
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l toolset -d 'Enable an extra tool set (repeatable). `conformance`: the official MCP conformance suite\'s fixtures, replacing every other tool (for testing mcpd itself; never in production). Only the test worker has them: `--worker target/debug/examples/mcpd-conformance-worker`' -r
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l http-session-idle-secs -d 'Seconds an HTTP session may stay idle before it and its worker are reaped' -r
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l allow-read -d 'A directory the stdio client may read (repeatable)' -r -F
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l allow-write -d 'A directory the stdio client may read and write (repeatable)' -r -F
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l allow-exec -d 'A program the stdio client may run with run_command (repeatable): a name looked up in /usr/local/bin:/usr/bin:/bin, or an absolute path. Runs inside the client\'s sandbox' -r
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l allow-code -d 'A language the stdio client may use for persistent code sessions (run_code): python3, sh, bash or node (repeatable)' -r
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -s c -l config -d 'Configuration file (TOML). Default: $MCPD_CONFIG if set, else /etc/mcpd/mcpd.toml when it exists, else the embedded default (stdio, the current directory read-only)' -r -F
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l worker -d 'Path of the mcpd-worker executable (default: next to mcpd)' -r -F
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l audit-log -d 'Write the tamper-evident audit log to this file (outside every client\'s roots)' -r -F
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l log -d 'Log filter for stderr (tracing syntax, e.g. info, mcpd=debug). Also: MCPD_LOG' -r
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l log-format -d 'Log format: text lines on stderr (the default), json lines on stderr, or journal entries (the default under systemd, when stderr is the journal)' -r -f -a "text\t'One human-readable line per event'
json\t'One JSON object per line (timestamp, level, target, fields), for log collectors'
journal\t'The systemd journal\'s native protocol: one entry per event, its fields as journal fields (PRIORITY from the level, SYSLOG_IDENTIFIER=mcpd). The default when stderr is the journal (systemd\'s JOURNAL_STREAM names it)'"
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l jwt-jwks -d 'Accept OAuth bearer JWTs on the HTTP listener, verified with the keys of this JWKS file (each key pins its algorithm); needs --jwt-issuer and --jwt-audience unless the configuration has [auth.jwt]. Token subjects map to clients by [clients.NAME.identity] jwt_sub' -r -F
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l jwt-issuer -d 'The one accepted token issuer (`iss`)' -r
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l jwt-audience -d 'The one accepted token audience (`aud`): this server\'s canonical URL, e.g. https://mcp.example.org/mcp (RFC 8707)' -r
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l unix -d 'Serve MCP on a Unix socket at PATH: Streamable HTTP (endpoint /mcp) unless --unix-protocol lines. Each peer\'s client comes from its uid/gid (SO_PEERCRED): `[clients.NAME.identity] unix_uid`/`unix_gid`' -r -F
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l unix-protocol -d 'What the Unix listener speaks: http (Streamable HTTP, the default) or lines (newline-delimited JSON-RPC as on stdio, one session per connection)' -r
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l dbus -d 'Serve MCP on D-Bus: own the well-known name of [dbus] name (org.mcpd.Server1) on the system or session bus; interface org.mcpd.Server1 (docs/dbus.md). Each caller\'s client comes from the bus\'s credentials of its unique name (uid, groups): `[clients.NAME.identity] unix_uid`/`unix_gid`' -r -f -a "system\t''
session\t''"
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l dbus-address -d 'Connect to the bus at this D-Bus address (e.g. unix:path=/run/test/bus) instead of the bus\'s usual one; needs --dbus or [dbus] bus' -r
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l metrics -d 'Serve Prometheus metrics (GET /metrics) at ADDR: 127.0.0.1:PORT, [::1]:PORT, localhost:PORT or unix:PATH; replaces `[metrics] listen`. Loopback or a Unix socket only' -r
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l instance -d 'This instance\'s name among identical ones behind a balancer (replaces `server.instance`): session ids start with NAME and a dot, so the balancer can send a session\'s requests to the instance that holds it. 1 to 32 of a-z, 0-9 and \'-\'' -r
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l tls-cert -d 'Serve HTTPS: the PEM certificate chain of the listener (with --tls-key). TLS 1.3 only unless [http.tls] min_version = "1.2". Reloaded on SIGHUP' -r -F
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l tls-key -d 'The PEM private key of --tls-cert (mode 600: a key others may read is refused)' -r -F
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l tls-client-ca -d 'Require client certificates chaining to this PEM CA bundle (mTLS); each certificate\'s SAN/CN names a client through [clients.NAME.identity]' -r -F
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l stdio -d 'Serve on stdin/stdout (the default transport when no HTTP listener is asked for)'
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l insecure-non-loopback-without-auth -d 'Allow the HTTP listener on a non-loopback address although mcpd has no HTTP authentication yet: anyone who can reach it acts as the HTTP client. Dangerous'
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l no-config -d 'Ignore the default configuration file: serve the embedded default plus these flags'
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l unix-systemd -d 'Serve the Unix socket systemd passed (socket activation: LISTEN_FDS, the descriptor named mcpd-unix or the only one): a listening socket (Accept=no), or one accepted connection (Accept=yes: mcpd serves it and exits when it closes)'
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -l http-systemd -d 'Serve Streamable HTTP on the TCP listening socket(s) systemd passed (the descriptors named mcpd-http, or the only one) instead of binding --http; [http] settings apply'
complete -c mcpd -n "__fish_mcpd_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mcpd -n "__fish_mcpd_using_subcommand check-config" -s c -l config -d 'The configuration file (default: $MCPD_CONFIG, else /etc/mcpd/mcpd.toml)' -r -F
complete -c mcpd -n "__fish_mcpd_using_subcommand check-config" -l json -d 'Print the effective policy as one JSON document instead'
complete -c mcpd -n "__fish_mcpd_using_subcommand check-config" -s h -l help -d 'Print help'
complete -c mcpd -n "__fish_mcpd_using_subcommand doctor" -s c -l config -d 'The configuration file whose clients\' views are shown (default: $MCPD_CONFIG, else /etc/mcpd/mcpd.toml when it exists, else the embedded default)' -r -F
complete -c mcpd -n "__fish_mcpd_using_subcommand doctor" -s h -l help -d 'Print help'
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and not __fish_seen_subcommand_from verify tail query keygen help" -s h -l help -d 'Print help'
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and not __fish_seen_subcommand_from verify tail query keygen help" -f -a "verify" -d 'Verify the hash chain (and signed checkpoints with --key); names the first broken record'
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and not __fish_seen_subcommand_from verify tail query keygen help" -f -a "tail" -d 'Print the last records: one aligned line each (time, event, principal, details), or the records themselves with --json'
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and not __fish_seen_subcommand_from verify tail query keygen help" -f -a "query" -d 'Print the records of one client, one event and/or a time window: one aligned line each, or the records themselves with --json'
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and not __fish_seen_subcommand_from verify tail query keygen help" -f -a "keygen" -d 'Generate an Ed25519 key pair for signed checkpoints'
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and not __fish_seen_subcommand_from verify tail query keygen help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from verify" -l key -d 'Ed25519 public key of the checkpoint signer (enables tail-truncation detection: the signed head file `<log>.head` must then exist and name the log\'s last checkpoint)' -r -F
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from verify" -l head -d 'The signed head file to check against (default `<log>.head`), e.g. a copy kept where whoever can write the log cannot' -r -F
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from verify" -l no-head -d 'Verify with --key but without any head file, for a log whose head is knowingly lost: records cut off the end of the log are then NOT detected (the report says so)'
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from verify" -s h -l help -d 'Print help'
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from tail" -s n -d 'How many records' -r
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from tail" -l json -d 'One JSON record per line, as logged'
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from tail" -s h -l help -d 'Print help'
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from query" -l client -d 'Principal (client id)' -r
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from query" -l since -d 'Records at or after this time: RFC 3339 (2026-11-25T08:00:00Z, offsets allowed), a date (2026-11-25, midnight UTC), or a time ago (90s, 15m, 1h, 2d, 1w)' -r
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from query" -l until -d 'Records at or before this time (the same forms as --since)' -r
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from query" -l event -d 'Event name (e.g. request, session.open)' -r
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from query" -l json -d 'One JSON record per line, as logged'
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from query" -s h -l help -d 'Print help'
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from keygen" -l private -d 'Private key output (keep it readable by the mcpd user only)' -r -F
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from keygen" -l public -d 'Public key output (for `mcpd audit verify --key`)' -r -F
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from keygen" -s h -l help -d 'Print help'
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from help" -f -a "verify" -d 'Verify the hash chain (and signed checkpoints with --key); names the first broken record'
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from help" -f -a "tail" -d 'Print the last records: one aligned line each (time, event, principal, details), or the records themselves with --json'
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from help" -f -a "query" -d 'Print the records of one client, one event and/or a time window: one aligned line each, or the records themselves with --json'
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from help" -f -a "keygen" -d 'Generate an Ed25519 key pair for signed checkpoints'
complete -c mcpd -n "__fish_mcpd_using_subcommand audit; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c mcpd -n "__fish_mcpd_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mcpd -n "__fish_mcpd_using_subcommand help; and not __fish_seen_subcommand_from serve check-config doctor audit completions help" -f -a "serve" -d 'Serve MCP. With no flags and no config: stdio, current directory read-only'
complete -c mcpd -n "__fish_mcpd_using_subcommand help; and not __fish_seen_subcommand_from serve check-config doctor audit completions help" -f -a "check-config" -d 'Validate a configuration file and print the effective policy'
complete -c mcpd -n "__fish_mcpd_using_subcommand help; and not __fish_seen_subcommand_from serve check-config doctor audit completions help" -f -a "doctor" -d 'Print what this kernel offers for confinement, and what each client\'s worker view will hold (the embedded default, or --config)'
complete -c mcpd -n "__fish_mcpd_using_subcommand help; and not __fish_seen_subcommand_from serve check-config doctor audit completions help" -f -a "audit" -d 'Read and verify the audit log'
complete -c mcpd -n "__fish_mcpd_using_subcommand help; and not __fish_seen_subcommand_from serve check-config doctor audit completions help" -f -a "completions" -d 'Print the shell completion script for SHELL on stdout'
complete -c mcpd -n "__fish_mcpd_using_subcommand help; and not __fish_seen_subcommand_from serve check-config doctor audit completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c mcpd -n "__fish_mcpd_using_subcommand help; and __fish_seen_subcommand_from audit" -f -a "verify" -d 'Verify the hash chain (and signed checkpoints with --key); names the first broken record'
complete -c mcpd -n "__fish_mcpd_using_subcommand help; and __fish_seen_subcommand_from audit" -f -a "tail" -d 'Print the last records: one aligned line each (time, event, principal, details), or the records themselves with --json'
complete -c mcpd -n "__fish_mcpd_using_subcommand help; and __fish_seen_subcommand_from audit" -f -a "query" -d 'Print the records of one client, one event and/or a time window: one aligned line each, or the records themselves with --json'
complete -c mcpd -n "__fish_mcpd_using_subcommand help; and __fish_seen_subcommand_from audit" -f -a "keygen" -d 'Generate an Ed25519 key pair for signed checkpoints'
