"""`netblock export`: Prometheus text, JSON or CSV, to stdout, a file, or /metrics."""

from __future__ import annotations

import time

from netblock.errors import BadInput
from netblock.reports import export


def register(sub) -> None:
    p = sub.add_parser("export", help="export kernel counters and store state (Prometheus, JSON, CSV)",
                       description="Export per-netblock dropped packets/bytes (read from the kernel now), "
                       "active blocks by source, observations by class and the last tick time. "
                       "With --output the file is written atomically (temp file + rename), suitable "
                       "for node_exporter's textfile collector.")
    p.add_argument("--format", choices=("prometheus", "json", "csv"), default="prometheus",
                   help="output format (default: prometheus)")
    p.add_argument("--output", metavar="FILE", help="write to FILE atomically (default: stdout)")
    p.add_argument("--listen", metavar="ADDR:PORT", nargs="?", const="",
                   help="serve the Prometheus format at http://ADDR:PORT/metrics until interrupted "
                   "(default address: [export] listen, 127.0.0.1:9425)")
    p.set_defaults(handler=cmd_export)


def _addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInput(f"--listen: {text!r} is not ADDR:PORT, e.g. 127.0.0.1:9425")
    return host, int(port)


def cmd_export(args, ctx) -> int:
    from netblock.run.fleet import own_view  # a fleet's store, seen as this host (as labelled)

    host = ctx.config.host_id

    def read():
        return export.snapshot(own_view(ctx.store(), host), ctx.backend(), host, ctx.now())

    if args.listen is not None:
        from netblock import store as stores

        addr, port = _addr(args.listen or ctx.config.export.listen)
        db, backend = ctx.db_path, ctx.backend()

        def fresh():  # the HTTP thread opens its own store connection per scrape; counters as last sampled
            with stores.open(db, host_id=host) as store:
                return export.snapshot(own_view(store, host), export.Sampled(backend, store), host, ctx.now())

        export.serve(addr, port, fresh)
        ctx.warn(f"serving http://{addr}:{port}/metrics; Ctrl-C stops")
        while True:
            time.sleep(3600)
    snap = read()
    if args.format == "prometheus":
        text = export.prometheus(lambda: snap)
    elif args.format == "json":
        text = export.as_json(snap)
    else:
        text = export.as_csv(snap)
    if args.output:
        export.write_atomically(args.output, text)
    else:
        ctx.stdout.write(text)
    return 0
