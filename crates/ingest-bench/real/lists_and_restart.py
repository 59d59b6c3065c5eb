#!/usr/bin/env python3
"""The ingester's first list and its restart on a REAL Kubernetes v1.36.2 API server.

Starts a control plane with ../shared/kube/start.sh (private run dir and ports), loads N pods,
then measures, each on the same data:
  1. `GET pods?resourceVersion=0&limit=100` (what the paged fallback sent before): answered
     from the watch cache whole, ignoring limit: time, bytes, pages, API server CPU and peak RSS;
  2. the same list paged as a consistent read (`limit=100`, no resourceVersion, continue
     tokens; what the paged fallback sends now);
  3. the ingester's initial sync with STREAMING_LISTS=false (consistent pages) and with
     streaming lists (the default): time to /readyz, ingester peak RSS and CPU, API server CPU;
  4. a restart with resume points: SIGTERM, changes while stopped, start again; time to
     /readyz and whether the changes were committed when it said ready.

Usage (from the repository root, after `cargo build --release -p resources-ingester`):
  python3 crates/ingest-bench/real/lists_and_restart.py [--pods 60000]
PostgreSQL: DB_HOST/DB_PORT/DB_USER/DB_PASS, else 127.0.0.1:5432 as postgres (trust).
"""
import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import http.client
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
INGESTER_BIN = None
SHARED = os.environ.get("KUBE_SHARED_DIR", os.path.join(ROOT, "..", "shared", "kube"))


def free_port():
    lo, hi = 10000, 32767
    import random
    while True:
        p = random.randint(lo, hi)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                return p
            except OSError:
                continue


class Plane:
    def __init__(self):
        self.run_dir = tempfile.mkdtemp(prefix="bench-real.")
        self.env = dict(os.environ, RUN_DIR=self.run_dir, ETCD_PORT=str(free_port()),
                        ETCD_PEER_PORT=str(free_port()), API_PORT=str(free_port()), FRESH="1")
        self.port = int(self.env["API_PORT"])
        subprocess.run(["bash", os.path.join(SHARED, "start.sh")], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pki = os.path.join(self.run_dir, "pki")
        self.ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        self.ctx.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))
        self.kubeconfig = os.path.join(self.run_dir, "admin.kubeconfig")

    def stop(self):
        subprocess.run(["bash", os.path.join(SHARED, "start.sh"), "stop"], env=self.env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["rm", "-rf", self.run_dir])

    def conn(self):
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=600)

    def request(self, method, path, body=None, conn=None):
        c = conn or self.conn()
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if conn is None:
            c.close()
        return r.status, data

    def apiserver_pid(self):
        with open(os.path.join(self.run_dir, "pids", "kube-apiserver.pid")) as f:
            return int(f.read().strip())


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class RssPeak:
    """Samples VmRSS of a process (VmHWM of a long-lived API server says nothing new)."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop_flag = pid, 0, False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop_flag:
            try:
                self.peak = max(self.peak, status_kib(self.pid, "VmRSS"))
            except OSError:
                return
            time.sleep(0.05)

    def done(self):
        self.stop_flag = True
        self.t.join()
        return self.peak / 1024


def pod(ns, i):
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"p{i:06d}", "namespace": ns,
                     "labels": {"app": f"app-{i % 50}", "tier": "web", "krateo.io/composition-id": "0f9e2c4c-3c1d-4b8e-9a51-1a2b3c4d5e6f"},
                     "annotations": {"bench/description": "x" * 600}},
        "spec": {"automountServiceAccountToken": False,
                 "containers": [{"name": f"c{j}", "image": "registry.example.com/team/app:1.2.3",
                                 "args": ["--port=8080", "--log-level=info"],
                                 "env": [{"name": f"VAR_{k}", "value": f"value-{k}-{i}"} for k in range(12)],
                                 "ports": [{"containerPort": 8080 + j, "name": f"http{j}"}],
                                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                               "limits": {"cpu": "500m", "memory": "256Mi"}}}
                                for j in range(3)]},
    }


def load(plane, ns, n, threads=6):
    plane.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    nxt = [0]
    lock = threading.Lock()

    def worker():
        c = plane.conn()
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= n:
                return
            st, body = plane.request("POST", f"/api/v1/namespaces/{ns}/pods", pod(ns, i), conn=c)
            if st != 201:
                raise SystemExit(f"create pod {i}: {st} {body[:300]}")

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    [t.start() for t in ts]
    [t.join() for t in ts]


def measure_list(plane, path_first, path_next):
    pid = plane.apiserver_pid()
    cpu0, rss = cpu_seconds(pid), RssPeak(pid)
    t0 = time.monotonic()
    c = plane.conn()
    pages, total_bytes, items, cont = 0, 0, 0, None
    while True:
        path = path_first if cont is None else path_next + "&continue=" + urllib.parse.quote(cont)
        st, body = plane.request("GET", path, conn=c)
        assert st == 200, (st, body[:300])
        pages += 1
        total_bytes += len(body)
        doc = json.loads(body)
        items += len(doc["items"])
        cont = doc["metadata"].get("continue")
        del doc, body
        if not cont:
            break
    elapsed = time.monotonic() - t0
    return dict(seconds=round(elapsed, 2), pages=pages, items=items, mib=round(total_bytes / 2**20, 1),
                apiserver_cpu_s=round(cpu_seconds(pid) - cpu0, 2), apiserver_peak_rss_mib=round(rss.done(), 1))


def pg_env():
    e = {"DB_HOST": os.environ.get("DB_HOST", "127.0.0.1"), "DB_PORT": os.environ.get("DB_PORT", "5432"),
         "DB_USER": os.environ.get("DB_USER", "postgres"), "DB_PASS": os.environ.get("DB_PASS", "")}
    return e


def psql(sql, db="postgres"):
    e = pg_env()
    env = dict(os.environ, PGPASSWORD=e["DB_PASS"])
    return subprocess.run(["psql", "-h", e["DB_HOST"], "-p", e["DB_PORT"], "-U", e["DB_USER"], "-d", db,
                           "-tAc", sql], env=env, check=True, capture_output=True, text=True).stdout.strip()


class Ingester:
    def __init__(self, plane, db, extra):
        self.port, self.metrics_port = free_port(), free_port()
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **pg_env(), "DB_NAME": db,
               "DB_PARAMS": "sslmode=disable", "KUBECONFIG": plane.kubeconfig, "CLUSTER_NAME": "bench",
               "PORT": str(self.port), "METRICS_PORT": str(self.metrics_port), "RUST_LOG": "warn", **extra}
        self.log = tempfile.NamedTemporaryFile(prefix="ingester.", suffix=".log", delete=False)
        self.p = subprocess.Popen([INGESTER_BIN], env=env,
                                  stdout=self.log, stderr=self.log)
        self.rss = RssPeak(self.p.pid)

    def ready(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            c.request("GET", "/readyz")
            return c.getresponse().status == 200
        except OSError:
            return False

    def wait_ready(self, timeout=900):
        t0 = time.monotonic()
        while not self.ready():
            if self.p.poll() is not None or time.monotonic() - t0 > timeout:
                raise SystemExit(f"ingester not ready; log {self.log.name}")
            time.sleep(0.05)
        return time.monotonic() - t0

    def stop(self):
        cpu = cpu_seconds(self.p.pid)
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=60)
        return cpu, self.rss.done()


def sync(plane, db, extra):
    psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    psql(f"CREATE DATABASE {db}")
    pid = plane.apiserver_pid()
    cpu0, rss = cpu_seconds(pid), RssPeak(pid)
    ing = Ingester(plane, db, extra)
    secs = ing.wait_ready()
    api_cpu, api_rss = cpu_seconds(pid) - cpu0, rss.done()
    cpu, peak = ing.stop()
    rows = psql("SELECT count(*) FROM krateo_resources WHERE resource_plural='pods' AND deleted_at IS NULL", db)
    return dict(ready_s=round(secs, 2), ingester_peak_rss_mib=round(peak, 1), ingester_cpu_s=round(cpu, 2),
                apiserver_cpu_s=round(api_cpu, 2), apiserver_peak_rss_mib=round(api_rss, 1), pod_rows=int(rows))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=60000)
    ap.add_argument("--ingester-bin", default=os.path.join(ROOT, "target", "release", "resources-ingester"))
    args = ap.parse_args()
    global INGESTER_BIN
    INGESTER_BIN = args.ingester_bin
    plane = Plane()
    try:
        t0 = time.monotonic()
        load(plane, "bench", args.pods)
        print(f"loaded {args.pods} pods in {time.monotonic() - t0:.1f} s", flush=True)
        base = "/api/v1/namespaces/bench/pods?limit=100"
        r0 = measure_list(plane, base + "&resourceVersion=0&resourceVersionMatch=NotOlderThan", base)
        print("LIST resourceVersion=0 limit=100 (before):", json.dumps(r0), flush=True)
        rc = measure_list(plane, base, base)
        print("LIST consistent pages limit=100 (now):   ", json.dumps(rc), flush=True)
        db = "bench_real"
        paged = sync(plane, db, {"STREAMING_LISTS": "false", "NAMESPACES": "bench"})
        print("SYNC paged fallback (consistent pages):  ", json.dumps(paged), flush=True)
        streamed = sync(plane, db, {"NAMESPACES": "bench,quiet", "CHECKPOINT_INTERVAL": "200ms"})
        print("SYNC streaming lists (default):          ", json.dumps(streamed), flush=True)
        # Restart with resume points: 18 scopes (2 cluster-wide, 8 kinds x 2 namespaces), 17 quiet.
        plane.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "quiet"}})
        ing = Ingester(plane, db, {"NAMESPACES": "bench,quiet", "CHECKPOINT_INTERVAL": "200ms"})
        ing.wait_ready()
        while int(psql("SELECT count(*) FROM krateo_ingester_watch_state", db)) < 18:
            time.sleep(0.1)  # every scope has stored its resume point
        ing.stop()
        st, _ = plane.request("DELETE", "/api/v1/namespaces/bench/pods/p000000")
        assert st == 200, st
        results = []
        for _ in range(3):
            ing = Ingester(plane, db, {"NAMESPACES": "bench,quiet", "CHECKPOINT_INTERVAL": "200ms"})
            secs = ing.wait_ready()
            deleted = psql("SELECT deleted_at IS NOT NULL FROM krateo_resources WHERE resource_name='p000000'", db)
            ing.stop()
            results.append((round(secs, 2), deleted == "t"))
        print("RESTART to /readyz (s, change made while stopped committed when ready):", results, flush=True)
        psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    finally:
        plane.stop()


if __name__ == "__main__":
    sys.exit(main())
