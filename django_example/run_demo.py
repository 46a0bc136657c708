"""`make demo`: every original bug, on the stock backend and on racefree.

For each backend of each pair (``races.pairs``) this serves the demo
project with gunicorn (several worker processes, several threads each),
or, for the ASGI pair (``redis-asgi``), with uvicorn (several worker
processes, one event loop each, async views), runs ``locustfile.py``
headless against it for a fixed time, and prints one table. memcached,
PostgreSQL and Redis are started here (loopback, free ports, temp dirs)
when their binaries are present; otherwise their rows say so and the
rest still run.

    python django_example/run_demo.py [--seconds 8] [--only file/racefree ...] [--json out.json]

Exit status: 0 when every racefree row is clean (no failure, mismatch,
lost increment or double add), 1 otherwise. Stock rows show their bug
where it reproduces on this machine.
"""

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from races.pairs import ASGI, NEEDS, PAIRS, RACEFREE, members  # noqa: E402
from support.servers import Memcached, Postgres, Redis, ServerMissing, free_port  # noqa: E402

# Stock backends whose client library may be missing (pylibmc needs a C
# build against libmemcached; djblets is installed without its Django pin).
LIBRARIES = {"PyLibMCCache": "pylibmc", "djblets ForwardingCacheBackend": "djblets"}
COUNTS = ("failures", "mismatches", "lost_increments", "double_adds")


def progress(message):
    print(message, file=sys.stderr, flush=True)


def start_servers(stores):
    """The servers the chosen stores need: {kind: server}, and notes for
    the ones that could not start."""
    servers, missing = {}, {}
    for kind, start in (("memcached", Memcached), ("postgres", Postgres), ("redis", Redis)):
        if not any(NEEDS.get(store) == kind for store in stores):
            continue
        try:
            servers[kind] = start()
        except ServerMissing as error:
            missing[kind] = str(error)
    return servers, missing


def demo_env(name, workdir, servers):
    env = dict(
        os.environ, RACEFREE_DEMO_CACHE=name, RACEFREE_DEMO_DIR=workdir, DJANGO_SETTINGS_MODULE="project.settings"
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, env.get("PYTHONPATH")]))
    if "memcached" in servers:
        env["RACEFREE_DEMO_MEMCACHED"] = servers["memcached"].location
    if "postgres" in servers:
        env["RACEFREE_DEMO_POSTGRES"] = f"127.0.0.1:{servers['postgres'].port}"
    if "redis" in servers:
        env["RACEFREE_DEMO_REDIS"] = servers["redis"].location
    if name.startswith("forwarding/"):
        env["RACEFREE_DEMO_RESETS"] = "1"
    if name.split("/", 1)[0] in ASGI:
        env["RACEFREE_DEMO_ASYNC"] = "1"
    return env


def wait_until_serving(url, server, deadline, program):
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"{program} exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url + "/health/", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{program} did not answer within 30 s")


def stop(process):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def server_command(name, args, port):
    """gunicorn (WSGI: processes x threads) or, for the ASGI stores,
    uvicorn (processes, one event loop each); (program, argv)."""
    bind = ["127.0.0.1", str(port)]
    if name.split("/", 1)[0] in ASGI:
        return "uvicorn", [
            sys.executable, "-m", "uvicorn", "project.asgi:application", "--app-dir", HERE, "--host", bind[0],
            "--port", bind[1], "--workers", str(args.workers), "--lifespan", "off", "--no-access-log",
            "--timeout-graceful-shutdown", "3", "--log-level", "warning"]
    return "gunicorn", [
        sys.executable, "-m", "gunicorn", "project.wsgi:application", "--chdir", HERE, "--bind", ":".join(bind),
        "--workers", str(args.workers), "--worker-class", "gthread", "--threads", str(args.threads),
        "--graceful-timeout", "3", "--log-level", "warning"]


def run_member(name, args, workdir, servers):
    """gunicorn (or uvicorn) + locust for one backend; the locust report,
    with the server's and locust's logs' paths."""
    env = demo_env(name, workdir, servers)
    logs = os.path.join(workdir, "logs", name.replace("/", "-").replace(" ", "_"))
    os.makedirs(logs, exist_ok=True)
    python = sys.executable
    if name.startswith("database/"):
        subprocess.run([python, os.path.join(HERE, "manage.py"), "createcachetable", "--database", "cache"],
                       env=env, check=True, cwd=HERE)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    program, command = server_command(name, args, port)
    with open(os.path.join(logs, f"{program}.log"), "w") as log:
        server = subprocess.Popen(command, env=env, cwd=HERE, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        wait_until_serving(url, server, time.monotonic() + 30, program)
        report = os.path.join(logs, "report.json")
        env["RACEFREE_DEMO_REPORT"] = report
        with open(os.path.join(logs, "locust.log"), "w") as log:
            locust = subprocess.run(
                [python, "-m", "locust", "-f", os.path.join(HERE, "locustfile.py"), "--headless", "--host", url,
                 "--users", str(args.users), "--spawn-rate", str(args.users), "--run-time", f"{args.seconds}s",
                 "--stop-timeout", "5", "--only-summary", "--loglevel", "WARNING"],
                env=env, cwd=HERE, stdout=log, stderr=subprocess.STDOUT, timeout=args.seconds + 120,
            )
        with open(report) as results:
            row = json.load(results)
        row["locust_exit"] = locust.returncode
        return row, logs
    finally:
        stop(server)


def cell(row, field):
    return f"{row[field]:,}" if isinstance(row.get(field), int) else "-"


def print_table(rows):
    print("| bug | backend | requests | failures | mismatches | lost increments | double adds | req/s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "skipped" in row:
            print(f"| {row['bug']} | {row['backend']} | {row['skipped']} | | | | | |")
            continue
        print(f"| {row['bug']} | {row['backend']} | {cell(row, 'requests')} | "
              + " | ".join(cell(row, field) for field in COUNTS) + f" | {row['rps']:,.0f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8, help="locust run time per backend")
    parser.add_argument("--users", type=int, default=24)
    parser.add_argument("--workers", type=int, default=3, help="gunicorn (and uvicorn) worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per gunicorn worker")
    parser.add_argument("--only", nargs="+", metavar="STORE/BACKEND", choices=members(), help="run only these")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)

    chosen = args.only or members()
    stores = {name.split("/", 1)[0] for name in chosen}
    workdir = tempfile.mkdtemp(prefix="racefree-demo-")
    started = time.monotonic()
    servers, missing = start_servers(stores)
    rows = []
    try:
        for index, name in enumerate(chosen, 1):
            store, member = name.split("/", 1)
            row = {"bug": PAIRS[store][0], "backend": member if member == RACEFREE else f"{member} (stock)",
                   "name": name}
            need = NEEDS.get(store)
            library = LIBRARIES.get(member)
            if need in missing:
                row["skipped"] = f"not run: {missing[need]}"
            elif library and importlib.util.find_spec(library) is None:
                row["skipped"] = f"not run: {library} is not installed (`make bench-deps`)"
            elif store in ASGI and importlib.util.find_spec("uvicorn") is None:
                row["skipped"] = "not run: uvicorn is not installed (`make bench-deps`)"
            else:
                served = (f"uvicorn {args.workers} processes (async views)" if store in ASGI
                          else f"gunicorn {args.workers} processes x {args.threads} threads")
                progress(f"[{index}/{len(chosen)}] {name}: {served}, locust {args.users} users "
                         f"for {args.seconds:g} s")
                try:
                    result, logs = run_member(name, args, workdir, servers)
                except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as error:
                    row["skipped"] = f"demo machinery failed: {error}"
                else:
                    row.update(result)
                    row["logs"] = logs
                    progress(f"        {result['requests']:,} requests, "
                             + ", ".join(f"{result[field]:,} {field.replace('_', ' ')}" for field in COUNTS))
            if "skipped" in row:
                progress(f"[{index}/{len(chosen)}] {name}: {row['skipped']}")
            rows.append(row)
    finally:
        for server in servers.values():
            server.close()

    asgi = (f" (ASGI rows: {args.workers} uvicorn processes, one event loop each)"
            if any(name.split("/", 1)[0] in ASGI for name in chosen) else "")
    print(f"\n{args.workers} gunicorn processes x {args.threads} threads{asgi}, {args.users} locust users, "
          f"{args.seconds:g} s per backend ({time.monotonic() - started:.0f} s in all)\n")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)
    ours = [row for row in rows if row["backend"] == RACEFREE]
    broken = [row["name"] for row in ours if "skipped" in row or any(row[field] for field in COUNTS)]
    if broken:
        progress(f"racefree rows not clean: {', '.join(broken)} (logs under {workdir}/logs)")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
