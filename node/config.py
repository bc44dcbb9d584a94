"""Node configuration: command-line flags and their documented defaults."""

import argparse
from dataclasses import dataclass, field, fields
from typing import Any

from cluster.settings import RaftSettings


def _limit(default: float, help_text: str) -> Any:
    """A Limits field: its flag is `--` + the name in kebab case, without the `_s` suffix."""
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class Limits:
    """Every size, count and duration the HTTP API accepts. Times in seconds.

    Each field is a `raftmq node` flag (`max_body_bytes` -> `--max-body-bytes`,
    `max_wait_s` -> `--max-wait`); README.md lists them.
    """

    max_body_bytes: int = _limit(8 << 20, "request body size (413 body_too_large)")
    max_message_bytes: int = _limit(1 << 20, "one message body (413 message_too_large)")
    max_batch: int = _limit(1000, "messages per publish, receipts per ack/nack")
    max_headers: int = _limit(64, "headers per message")
    max_receive: int = _limit(1000, "largest `max` of one receive or stream read")
    max_wait_s: float = _limit(20.0, "longest long-poll `wait`")
    max_delay_s: float = _limit(900.0, "longest delivery or nack delay")
    max_visibility_timeout_s: float = _limit(43200.0, "longest visibility timeout (lease)")
    dedup_window_s: float = _limit(300.0, "how long a publish id is remembered for dedup")
    max_waiters: int = _limit(10000, "long polls parked on this node at once (then 503)")
    max_body_buffer_bytes: int = _limit(
        256 << 20, "request bodies being received at once, summed (then 503 overloaded)"
    )
    body_timeout_s: float = _limit(
        30.0, "a request body must arrive within this time (else 408 request_timeout)"
    )
    idle_timeout_s: float = _limit(
        60.0, "close a connection that sends no complete request head for this long"
    )
    max_channels: int = _limit(
        1000, "WebSocket channels open on this node at once (then 503 overloaded)"
    )


def limit_flag(name: str) -> str:
    return "--" + name.removesuffix("_s").replace("_", "-")


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    http_host: str
    http_port: int
    advertise_http: str
    raft: RaftSettings
    limits: Limits = field(default_factory=Limits)
    log_level: str = "INFO"
    log_format: str = "text"
    join: str | None = None
    restore: str | None = None
    # /metrics needs a token (any user) once authentication is on.
    metrics_auth: bool = False
    # HTTPS for the HTTP API (PEM files); see node/tls.py.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    tls_ca: str | None = None


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    # isascii(): str.isdigit() takes "²", which int() refuses.
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT with a port of 1-65535, got {value!r}"
        )
    return host, int(port)


def _seconds_range(value: str) -> tuple[float, float]:
    low, sep, high = value.partition(",")
    try:
        bounds = (float(low), float(high))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX seconds, got {value!r}") from None
    if not sep or not 0 < bounds[0] < bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 0 < MIN < MAX, got {value!r}")
    return bounds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raftmq node",
        description="Run one raftmq node.",
        epilog=(
            "example: raftmq node --id n1 --data-dir data/n1 --raft 127.0.0.1:7100 "
            "--http 127.0.0.1:7200 --peers 127.0.0.1:7101,127.0.0.1:7102"
        ),
    )
    parser.add_argument("--id", required=True, help="node id, unique in the cluster")
    parser.add_argument("--data-dir", required=True, help="directory for journal, snapshot, LMDB")
    parser.add_argument("--raft", required=True, help="HOST:PORT this node's Raft listens on")
    parser.add_argument("--http", required=True, help="HOST:PORT the HTTP API listens on")
    parser.add_argument(
        "--peers", default="", help="comma-separated HOST:PORT Raft addresses of the other nodes"
    )
    parser.add_argument(
        "--advertise-http",
        help="URL other nodes redirect clients to (default http://HTTP, https://HTTP with TLS)",
    )
    parser.add_argument(
        "--fsync",
        choices=["always", "never"],
        default="always",
        help="fdatasync the Raft journal before answering (default: always)",
    )
    parser.add_argument("--cluster-secret", help="password that encrypts Raft traffic")
    parser.add_argument(
        "--restore",
        metavar="FILE",
        help="seed an empty data dir from a backup (raftmq ctl backup) before starting",
    )
    parser.add_argument(
        "--join",
        metavar="URL",
        help="on first start (empty data dir), ask the cluster at URL to add this node",
    )
    parser.add_argument(
        "--snapshot-entries",
        type=int,
        default=RaftSettings.snapshot_entries,
        help="compact the Raft log after this many entries (default: %(default)s)",
    )
    parser.add_argument(
        "--snapshot-log-ratio",
        type=float,
        default=RaftSettings.snapshot_log_ratio,
        help="once the store exceeds 64 MiB, snapshot only when the Raft journal is at "
        "least this many times the store's size; 0: every --snapshot-entries "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--store-max-bytes",
        type=int,
        default=RaftSettings.lmdb_map_size,
        metavar="N",
        help="the store's capacity (LMDB map size; may grow between restarts, not shrink "
        "below the data); publishes and appends answer 507 storage_full once its live data "
        "is over 90%% of it (default: %(default)s)",
    )
    parser.add_argument(
        "--min-free-disk-bytes",
        type=int,
        default=RaftSettings.min_free_disk_bytes,
        metavar="N",
        help="publishes and appends answer 507 storage_full while the data directory's disk "
        "has less free than this plus the store's live size (room for a snapshot) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--proposal-timeout",
        type=float,
        default=RaftSettings.proposal_timeout_s,
        help="seconds before a write answers 503 unknown_outcome (default: %(default)s)",
    )
    parser.add_argument(
        "--tls-cert", metavar="FILE", help="PEM certificate (chain): serve the HTTP API over HTTPS"
    )
    parser.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="PEM CA bundle: require client certificates it signed (needs --tls-cert)",
    )
    parser.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="PEM CA bundle this node verifies other nodes with, e.g. for --join "
        "(default: the system store)",
    )
    parser.add_argument(
        "--metrics-auth",
        action="store_true",
        help="once users exist, /metrics needs a token too (default: open for scrapers)",
    )
    parser.add_argument(
        "--election-timeout",
        type=_seconds_range,
        default=f"{RaftSettings.election_timeout_min_s:g},{RaftSettings.election_timeout_max_s:g}",
        metavar="MIN,MAX",
        help="a follower that hears no leader for a random time in [MIN, MAX] seconds calls "
        "an election: shorter fails over faster, longer rides out CPU or disk stalls "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-pending-commands",
        type=int,
        default=RaftSettings.max_pending_commands,
        help="writes waiting for Raft on the leader; beyond, 503 overloaded (default: %(default)s)",
    )
    limits = parser.add_argument_group("limits", "what one client may ask of this node")
    for limit in fields(Limits):
        limits.add_argument(
            limit_flag(limit.name),
            dest=f"limit_{limit.name}",
            type=type(limit.default),
            default=limit.default,
            metavar="N" if isinstance(limit.default, int) else "SECONDS",
            help=f"{limit.metadata['help']} (default: %(default)s)",
        )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="text lines, or one JSON object per line (default: %(default)s)",
    )
    return parser


def parse_config(argv: list[str] | None) -> NodeConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    scheme = "https" if args.tls_cert is not None else "http"
    peers = tuple(p.strip() for p in args.peers.split(",") if p.strip())
    try:
        http_host, http_port = _host_port(args.http)
        _host_port(args.raft)
        for peer in peers:
            _host_port(peer)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.snapshot_log_ratio < 0:
        parser.error("--snapshot-log-ratio must be 0 or more")
    if args.store_max_bytes < 1 << 20:
        parser.error("--store-max-bytes must be at least 1 MiB")
    if args.min_free_disk_bytes < 0:
        parser.error("--min-free-disk-bytes must be 0 or more")
    raft = RaftSettings(
        raft_address=args.raft,
        peers=peers,
        data_dir=args.data_dir,
        fsync=args.fsync == "always",
        cluster_secret=args.cluster_secret,
        snapshot_entries=args.snapshot_entries,
        snapshot_log_ratio=args.snapshot_log_ratio,
        proposal_timeout_s=args.proposal_timeout,
        max_pending_commands=args.max_pending_commands,
        lmdb_map_size=args.store_max_bytes,
        min_free_disk_bytes=args.min_free_disk_bytes,
        election_timeout_min_s=args.election_timeout[0],
        election_timeout_max_s=args.election_timeout[1],
    )
    limits = Limits(**{f.name: getattr(args, f"limit_{f.name}") for f in fields(Limits)})
    for name, value in vars(limits).items():
        if value <= 0:
            parser.error(f"{limit_flag(name)} must be positive")
    return NodeConfig(
        node_id=args.id,
        http_host=http_host,
        http_port=http_port,
        advertise_http=(args.advertise_http or f"{scheme}://{args.http}").rstrip("/"),
        raft=raft,
        limits=limits,
        log_level=args.log_level.upper(),
        log_format=args.log_format,
        join=args.join,
        restore=args.restore,
        metrics_auth=args.metrics_auth,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        tls_ca=args.tls_ca,
    )
