"""Side-by-side NBD server benchmark: nbd-sidecar serve vs qemu-nbd vs nbdkit (file plugin).

Every workload runs against each server in turn (the order rotates every round, so drift in the shared
machine hits all servers alike), on the same image files, over a unix socket and over TCP loopback.
Reported per workload: the median throughput (MiB/s or IOPS) and the median server CPU-seconds per GiB
moved, taken from /proc/PID/stat (utime + stime of all the server's threads) around the workload only,
each as a ratio to the best reference server; and our server's peak RSS (VmHWM). Beside them, the client's
CPU load (CPUs busy on average while it ran, from its rusage): a single-threaded client such as fio near 1.0
is itself the limit, and no server can raise the throughput of that cell much.
"""

import argparse
import json
import os
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30
MIB = 1 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


def can_connect(transport, address):
    family = socket.AF_UNIX if transport == "unix" else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.connect(address)
            return True
        except OSError:
            return False


class Server:
    """One server process exporting IMAGE as 'disk' over one transport."""

    def __init__(self, kind, image, transport, workdir, sidecar, baseline=None, extra_args=()):
        self.kind = kind
        self.transport = transport
        self.sock = os.path.join(workdir, f"{kind}.sock")
        self.port = free_port()
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        if kind in ("ours", "base"):
            args = [sidecar if kind == "ours" else baseline, "serve", "--export", f"disk={image}", "--log-level", "warning"]
            args += list(extra_args) if kind == "ours" else []
            args += ["--unix", self.sock] if transport == "unix" else ["--listen", f"127.0.0.1:{self.port}"]
        elif kind == "qemu-nbd":
            args = ["qemu-nbd", "-f", "raw", "-t", "-e", "0", "-x", "disk"]
            args += ["-k", self.sock] if transport == "unix" else ["-b", "127.0.0.1", "-p", str(self.port)]
            args.append(image)
        else:
            args = ["nbdkit", "-f", "-e", "disk"]
            args += ["-U", self.sock] if transport == "unix" else ["-i", "127.0.0.1", "-p", str(self.port)]
            args += ["file", image]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        address = self.sock if transport == "unix" else ("127.0.0.1", self.port)
        try:
            wait_for(lambda: self.process.poll() is None and can_connect(transport, address), 30, f"{kind} to listen")
        except RuntimeError:
            self.stop()
            raise

    @property
    def uri(self):
        if self.transport == "unix":
            return f"nbd+unix:///disk?socket={self.sock}"
        return f"nbd://127.0.0.1:{self.port}/disk"

    @property
    def pid(self):
        return self.process.pid

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run(args, timeout=600):
    result = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.stdout


class Workload:
    def __init__(self, name, image, measure, unit, writes=False):
        self.name = name
        self.image = image      # which prepared image the server exports
        self.measure = measure  # function(uri) -> (throughput, bytes moved)
        self.unit = unit        # "MiB/s" or "IOPS"
        self.writes = writes    # the export is reset to a fresh sparse target before each run


def nbdcopy_read(connections, size, repeat=1):
    """Reads the whole export REPEAT times back to back: a read that takes under half a second is mostly the
    noise of one client's start-up and page faults, which a few reads in a row average out."""
    def measure(uri):
        start = time.monotonic()
        for _ in range(repeat):
            run(["nbdcopy", "-C", str(connections), uri, "null:"])
        return repeat * size / MIB / (time.monotonic() - start), repeat * size
    return measure


def nbdcopy_write(connections, source, size):
    def measure(uri):
        start = time.monotonic()
        run(["nbdcopy", "-C", str(connections), source, uri])
        return size / MIB / (time.monotonic() - start), size
    return measure


def fio_random(rw, depth, runtime, size):
    def measure(uri):
        out = run(["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", "--bs=4k",
                   f"--iodepth={depth}", f"--size={size}", "--time_based", f"--runtime={runtime}",
                   "--ramp_time=1", "--output-format=json"], timeout=runtime + 120)
        job = json.loads(out[out.index("{"):])["jobs"][0]
        side = job["read"] if rw == "randread" else job["write"]
        ios = side["total_ios"]
        return side["iops"], ios * 4096
    return measure


def warm_up(uri, writes):
    """One short burst of the same kinds of requests before measuring, for every server alike: nothing of a
    long-running server's steady state is measured otherwise (.NET compiles its hot paths on first use)."""
    for rw, bs in (("randread", "4k"), ("randread", "256k")) + ((("randwrite", "4k"), ("randwrite", "256k")) if writes else ()):
        run(["fio", "--name=warmup", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}", "--iodepth=16",
             "--size=64M", "--time_based", "--runtime=500ms", "--output-format=terse"], timeout=120)
    run(["nbdinfo", "--map", uri])


def prepare_images(workdir, seq_size, sparse_size):
    seq = os.path.join(workdir, "seq.img")
    sparse = os.path.join(workdir, "sparse.img")
    if not os.path.exists(seq) or os.path.getsize(seq) != seq_size:
        print(f"creating {seq} ({seq_size // MIB} MiB of random data)", flush=True)
        with open(seq, "wb") as f:
            left = seq_size
            chunk = os.urandom(8 * MIB)
            while left > 0:
                f.write(chunk[:min(left, len(chunk))])
                left -= len(chunk)
    if not os.path.exists(sparse) or os.path.getsize(sparse) != sparse_size:
        print(f"creating {sparse} ({sparse_size // MIB} MiB, 90% holes)", flush=True)
        with open(sparse, "wb") as f:
            f.truncate(sparse_size)
            chunk = os.urandom(4 * MIB)
            # 4 MiB of data at the start of every 40 MiB: 10% allocated.
            for offset in range(0, sparse_size, 40 * MIB):
                f.seek(offset)
                f.write(chunk[:min(len(chunk), sparse_size - offset)])
    # Warm the page cache so every server reads the same cached pages.
    for path in (seq, sparse):
        subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)
    return seq, sparse


def reset_target(path, size):
    with open(path, "wb") as f:
        f.truncate(size)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sidecar", required=True)
    parser.add_argument("--quick", action="store_true", help="small images, one round: a smoke run")
    parser.add_argument("--reps", type=int, default=None, help="rounds per workload (default 3, quick 1)")
    parser.add_argument("--only", default=None, help="run workloads whose name contains this text")
    parser.add_argument("--transports", default="unix,tcp")
    parser.add_argument("--dir", default=None, help="where images live (default: a folder under TMPDIR, kept)")
    parser.add_argument("--baseline", default=None,
                        help="another nbd-sidecar build, run alongside as 'base' for a before/after comparison")
    parser.add_argument("--serve-args", default="",
                        help="extra options for our server only, e.g. '--poll-us 0' to compare a setting with --baseline")
    options = parser.parse_args()

    quick = options.quick
    reps = options.reps or (1 if quick else 3)
    seq_size = (256 if quick else 2048) * MIB
    sparse_size = (1 if quick else 4) * GIB
    runtime = 2 if quick else 3
    workdir = options.dir or os.path.join(tempfile.gettempdir(), "nbd-server-bench")
    os.makedirs(workdir, exist_ok=True)
    seq, sparse = prepare_images(workdir, seq_size, sparse_size)
    target = os.path.join(workdir, "target.img")
    random_target = os.path.join(workdir, "random-target.img")

    workloads = [
        Workload("seq read nbdcopy -C1", seq, nbdcopy_read(1, seq_size), "MiB/s"),
        Workload("seq read nbdcopy -C4", seq, nbdcopy_read(4, seq_size), "MiB/s"),
        Workload("seq write nbdcopy -C1", target, nbdcopy_write(1, seq, seq_size), "MiB/s", writes=True),
        Workload("seq write nbdcopy -C4", target, nbdcopy_write(4, seq, seq_size), "MiB/s", writes=True),
        Workload("rand read 4k QD1", seq, fio_random("randread", 1, runtime, seq_size), "IOPS"),
        Workload("rand read 4k QD16", seq, fio_random("randread", 16, runtime, seq_size), "IOPS"),
        Workload("rand write 4k QD1", random_target, fio_random("randwrite", 1, runtime, seq_size), "IOPS", writes=True),
        Workload("rand write 4k QD16", random_target, fio_random("randwrite", 16, runtime, seq_size), "IOPS", writes=True),
        Workload(f"sparse read {sparse_size // GIB}G 90% holes", sparse, nbdcopy_read(4, sparse_size, repeat=3), "MiB/s"),
    ]
    if options.only:
        workloads = [w for w in workloads if options.only in w.name]

    kinds = ["ours", "qemu-nbd", "nbdkit"] + (["base"] if options.baseline else [])
    transports = options.transports.split(",")
    results = {}   # (workload, transport, kind) -> list of (throughput, cpu s/GiB, client CPU load)
    peak_rss = 0.0
    for transport in transports:
        for workload in workloads:
            for round_ in range(reps):
                order = kinds[round_ % len(kinds):] + kinds[:round_ % len(kinds)]
                for kind in order:
                    if workload.writes:
                        reset_target(workload.image, seq_size)
                        # Every write run starts with no dirty pages: the kernel throttles a writer by the dirty
                        # data of the whole system, so one run's writeback would otherwise slow down the next.
                        os.sync()
                    server = Server(kind, workload.image, transport, workdir, options.sidecar, options.baseline,
                                    shlex.split(options.serve_args))
                    try:
                        warm_up(server.uri, workload.writes)
                        cpu0, client0, wall0 = cpu_seconds(server.pid), children_cpu_seconds(), time.monotonic()
                        throughput, moved = workload.measure(server.uri)
                        cpu = cpu_seconds(server.pid) - cpu0
                        client_load = (children_cpu_seconds() - client0) / (time.monotonic() - wall0)
                        if kind == "ours":
                            peak_rss = max(peak_rss, peak_rss_mib(server.pid))
                    finally:
                        server.stop()
                    per_gib = cpu / (moved / GIB) if moved else float("nan")
                    results.setdefault((workload.name, transport, kind), []).append((throughput, per_gib, client_load))
                    print(f"  {transport:4} {workload.name:28} {kind:9} {throughput:10.0f} {workload.unit:5} "
                          f"{per_gib:7.3f} CPU-s/GiB   client {client_load:4.2f} CPUs", flush=True)

    print()
    print(f"machine: {os.cpu_count()} cores, {platform_line()}")
    print(f"rounds per cell: {reps} (median shown); ratios are ours / best of qemu-nbd and nbdkit; "
          f"client: the client's CPU load (CPUs) against ours / against the faster reference")
    header = (f"{'transport':9} {'workload':28} {'ours':>10} {'qemu-nbd':>10} {'nbdkit':>10} {'ratio':>6}   "
              f"{'CPU-s/GiB ours':>14} {'qemu-nbd':>9} {'nbdkit':>9} {'ratio':>6}   {'client':>9}")
    if options.baseline:
        header += f"   {'base':>10} {'ours/base':>9} {'CPU ours/base':>13}"
    print(header)
    print("-" * len(header))
    for transport in transports:
        for workload in workloads:
            med = {k: tuple(statistics.median(run_[i] for run_ in results[(workload.name, transport, k)]) for i in range(3))
                   for k in kinds}
            best_throughput = max(med["qemu-nbd"][0], med["nbdkit"][0])
            faster_reference = "qemu-nbd" if med["qemu-nbd"][0] > med["nbdkit"][0] else "nbdkit"
            best_cpu = min(med["qemu-nbd"][1], med["nbdkit"][1])
            unit = workload.unit
            print(f"{transport:9} {workload.name:28} {fmt(med['ours'][0], unit):>10} {fmt(med['qemu-nbd'][0], unit):>10} "
                  f"{fmt(med['nbdkit'][0], unit):>10} {med['ours'][0] / best_throughput:6.2f}   "
                  f"{med['ours'][1]:14.3f} {med['qemu-nbd'][1]:9.3f} {med['nbdkit'][1]:9.3f} "
                  f"{(med['ours'][1] / best_cpu) if best_cpu > 0 else float('inf'):6.2f}   "
                  f"{med['ours'][2]:4.2f}/{med[faster_reference][2]:4.2f}"
                  + (f"   {fmt(med['base'][0], unit):>10} {med['ours'][0] / med['base'][0]:9.2f} "
                     f"{(med['ours'][1] / med['base'][1]) if med['base'][1] > 0 else float('inf'):13.2f}"
                     if options.baseline else ""))
    print()
    print(f"peak RSS of nbd-sidecar serve (VmHWM, max over all runs): {peak_rss:.0f} MiB")


def fmt(value, unit):
    return f"{value / 1000:.1f}k" if unit == "IOPS" else f"{value:.0f}"


def platform_line():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, kernel {os.uname().release}"


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
