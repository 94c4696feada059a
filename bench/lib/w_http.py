"""HTTP workloads: a 1 GiB download, 1 KiB files under wrk, and memory after that load."""

from __future__ import annotations

import re

import peers
from common import TOKEN, Ctx, Goal, Row, ferry, log, make_file, median, warm
from common import run as sh

AUTH = f"Authorization: Bearer {TOKEN}"


def curl_speed(url: str, headers: list[str]) -> tuple[float, str]:
    """One download with curl: MB/s, and the response headers."""
    args = ["curl", "-sS", "-o", "/dev/null", "-D", "-", "-w", "\n%{speed_download}"]
    for h in headers:
        args += ["-H", h]
    out = sh(args + [url]).stdout
    head, speed = out.rsplit("\n", 1)
    return float(speed) / 1e6, head


def wrk(url: str, headers: list[str], seconds: int) -> float:
    """Requests per second of `wrk -t2 -c64`; errors or non-2xx answers fail the run."""
    args = ["wrk", "-t2", "-c64", f"-d{seconds}s"]
    for h in headers:
        args += ["-H", h]
    out = sh(args + [url]).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors against {url}:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def run(ctx: Ctx) -> list[Row]:
    """The HTTP rows."""
    root = ctx.work / "http-root"
    size = ctx.size(1 << 30, 64 << 20)
    big = make_file(root / "big.bin", size)
    make_file(root / "small.bin", 1024)
    warm(big)
    srv, _, http = ferry(ctx, root)
    others = peers.start_all(ctx, [
        ("nginx", lambda: peers.nginx(ctx, root)),
        ("dufs", lambda: peers.dufs(ctx, root)),
        ("miniserve", lambda: peers.miniserve(ctx, root)),
    ])
    targets = {"ferry": (f"http://127.0.0.1:{http}/files/", [AUTH])}
    targets.update({n: (f"http://127.0.0.1:{s.port}/", []) for n, s in others.items()})
    try:
        # The first download hashes the file into ferry's digest cache: the workload is warm.
        _, head = curl_speed(targets["ferry"][0] + "big.bin", [AUTH])
        if "x-checksum-md5" not in head.lower():
            raise RuntimeError("ferry's download carries no checksum header")
        big_mb: dict[str, list[float]] = {n: [] for n in targets}
        for i in range(ctx.runs):
            for name, (base, hdrs) in targets.items():
                speed, _ = curl_speed(base + "big.bin", hdrs)
                big_mb[name].append(speed)
                log(f"1 GiB download run {i + 1}: {name} {speed:.0f} MB/s")
        secs = 2 if ctx.quick else 10
        rps: dict[str, list[float]] = {n: [] for n in targets}
        for i in range(ctx.runs):
            for name, (base, hdrs) in targets.items():
                r = wrk(base + "small.bin", hdrs, secs)
                rps[name].append(r)
                log(f"1 KiB wrk run {i + 1}: {name} {r:.0f} req/s")
        rss = {"ferry": srv.rss_kib() / 1024}
        rss.update({n: s.rss_kib() / 1024 for n, s in others.items()})
    finally:
        srv.stop()
        for s in others.values():
            s.stop()
    label = "1 GiB" if not ctx.quick else f"{size >> 20} MiB"
    peer_names = ["nginx", "dufs", "miniserve"]
    return [
        Row("HTTP", f"download {label}, warm cache, MD5 header", "MB/s",
            median(big_mb["ferry"]), {n: median(big_mb.get(n, [])) for n in peer_names},
            [Goal("nginx", 0.9), Goal("dufs", 1.8), Goal("miniserve", 1.8)],
            note="curl -o /dev/null; nginx with sendfile on"),
        Row("HTTP", "1 KiB file, wrk -t2 -c64, token on", "req/s",
            median(rps["ferry"]), {n: median(rps.get(n, [])) for n in peer_names},
            [Goal("nginx", 0.5)], note=f"{secs} s per run; ferry with a bearer token"),
        Row("Memory", "server RSS after the 1 KiB load", "MB",
            rss["ferry"], {n: rss.get(n) for n in peer_names},
            [Goal("dufs", 1.0)], higher_is_better=False,
            note="whole process tree (nginx: master and worker)"),
    ]

