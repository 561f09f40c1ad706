#!/usr/bin/env python3
"""The measuring half of Deploy/bench-peers.sh: one no-op job, run the same way through jobgate, Celery and RQ.

The shell script starts redis-server, gearmand and the gateway (and the virtual environment with Celery and RQ);
this starts each system's workers for its turn in a round, measures, and stops them again, so that no idle worker
of one system costs CPU in another's turn. Every process it starts is recorded as `<pid> <start time>` (like
Deploy/demo.sh does) in the run's folder, and in $JOBGATE_TEST_PID_DIR when that is set, so that a crashed run
is cleaned up by pid; it stops them itself by pid, never by name.

Per system and round: throughput (N jobs, a window of W in flight, oldest result collected first), latency (one
job at a time, submit to result), and CPU seconds per 1,000 jobs of the throughput part, from /proc/<pid>/stat,
for the servers the system uses and for its workers (with everything they started, and reaped: cutime + cstime).
"""

import argparse
import json
import math
import os
import random
import signal
import socket
import statistics
import string
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAYLOAD_BYTES = 16
RESULT_TIMEOUT_S = 60  # a job whose result takes longer fails the run: something is broken, not slow
RQ_POLL_INTERVAL_S = 0.001
COLUMNS = ["system", "jobs/s", "p50", "p99", "server + worker CPU-s per 1,000 jobs"]


class BenchError(Exception):
    pass


def log(message):
    print(message, file=sys.stderr, flush=True)


# MARK: processes


def stat_fields(pid):
    """The fields of /proc/<pid>/stat from the third (state) on; the name before them may hold spaces."""
    with open(f"/proc/{pid}/stat") as file:
        return file.read().rsplit(")", 1)[1].split()


def cpu_seconds(roots):
    """CPU time of the processes `roots` and all their descendants alive now, each with what it reaped.

    A child's time moves into its parent's cutime + cstime when the parent reaps it, so every process that ran
    under a root is counted once, alive or ended (Celery's prefork children, RQ's work horses, `cat` per job).
    """
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(stat_fields(entry)[1]), []).append(int(entry))
            except (OSError, IndexError):
                pass  # ended while we looked
    ticks, todo = 0, list(roots)
    while todo:
        pid = todo.pop()
        try:
            fields = stat_fields(pid)
        except OSError:
            continue
        ticks += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
        todo.extend(children.get(pid, []))
    return ticks / CLOCK_TICKS


class RecordedProcesses:
    """The worker processes this driver started, each recorded until it is stopped."""

    def __init__(self, folder):
        self.folder = folder
        self.test_folder = os.environ.get("JOBGATE_TEST_PID_DIR") or None
        self.running = []  # (name, Popen, record files)

    def start(self, name, argv, env=None, cwd=None):
        log_file = open(self.folder / "logs" / f"{name}.log", "ab")
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
        log_file.close()
        record = f"{process.pid} {stat_fields(process.pid)[19]}\n"
        files = [self.folder / "pids" / f"{name}.pid"]
        if self.test_folder:
            files.append(Path(self.test_folder) / str(process.pid))
        for file in files:
            file.write_text(record)
        self.running.append((name, process, files))
        return process.pid

    def pids(self):
        return [process.pid for _, process, _ in self.running]

    def check_running(self):
        for name, process, _ in self.running:
            if process.poll() is not None:
                raise BenchError(f"{name} exited ({process.returncode}):\n{self.log_tail(name)}")

    def log_tail(self, prefix, lines=20):
        """The last lines of the log of each process whose name starts with `prefix`."""
        tails = []
        for path in sorted((self.folder / "logs").glob(f"{prefix}*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(tails)

    def stop_all(self):
        """SIGTERM to each (they finish and stop what they started), SIGKILL for what is left after 10 s."""
        for _, process, _ in self.running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, process, files in self.running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for file in files:
                file.unlink(missing_ok=True)
        self.running = []


# MARK: the systems


def payloads(count):
    """Distinct 16-byte ASCII payloads (JSON- and pickle-friendly alike)."""
    alphabet = string.ascii_letters + string.digits
    return ["".join(random.choices(alphabet, k=PAYLOAD_BYTES)) for _ in range(count)]


class LineProtocolClient:
    """One connection to the gateway: `SUBMIT … wait=`, whose reply is the outcome, pipelined in order."""

    def __init__(self, address):
        host, port = address.rsplit(":", 1)
        self.socket = socket.create_connection((host, int(port)))
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.socket.makefile("rb")

    def send_submit(self, function, payload):
        data = payload.encode()
        line = f"SUBMIT {function} {len(data)} wait={RESULT_TIMEOUT_S * 1000}\r\n".encode()
        self.socket.sendall(line + data + b"\r\n")

    def read_outcome(self):
        line = self.reader.readline()
        words = line.split()
        if len(words) == 3 and words[0] == b"DONE":
            result = self.reader.read(int(words[2]))
            self.reader.readline()  # the line break after the block
            return result.decode()
        raise BenchError(f"the gateway answered {line!r}")

    def close(self):
        self.reader.close()
        self.socket.close()


class System:
    """One row of the table: how to start its workers and how a client submits a job and gets its result."""

    key = ""
    label = ""
    servers = ["redis"]

    def __init__(self, options, processes):
        self.options = options
        self.processes = processes

    def start_workers(self):
        raise NotImplementedError

    def connect(self):
        pass

    def disconnect(self):
        pass

    def submit(self, payload):
        raise NotImplementedError

    def collect(self, handle):
        raise NotImplementedError

    def expected(self, payload):
        return payload


class JobgateSystem(System):
    servers = ["redis", "gearmand", "gateway"]
    function = ""

    def connect(self):
        self.client = LineProtocolClient(self.options.gateway)

    def disconnect(self):
        self.client.close()

    def submit(self, payload):
        self.client.send_submit(self.function, payload)

    def collect(self, handle):
        return self.client.read_outcome()  # replies come in request order


class JobgateCommand(JobgateSystem):
    key = "jobgate-cat"
    label = "jobgate, `jobgate worker --concurrency 4 -- cat`"
    function = "peers-noop"

    def start_workers(self):
        self.processes.start(self.key, [
            self.options.jobgate, "worker", "--function", self.function, "--concurrency", "4",
            "--gearman", self.options.gearman, "--redis", self.options.redis, "--", "cat",
        ])


class JobgatePHP(JobgateSystem):
    key = "jobgate-php"
    label = "jobgate, README's PHP worker × 4 (reverses the payload)"
    function = "reverse"

    def start_workers(self):
        script = self.options.state / "php-worker.php"
        script.write_text(readme_example("php-worker"))
        gearman_host, gearman_port = self.options.gearman.rsplit(":", 1)
        redis_host, redis_port = self.options.redis.rsplit(":", 1)
        env = dict(os.environ, GEARMAN_HOST=gearman_host, GEARMAN_PORT=gearman_port, REDIS_HOST=redis_host,
                   REDIS_PORT=redis_port)
        for number in range(4):
            self.processes.start(f"{self.key}-{number}", ["php", str(script)], env=env)

    def expected(self, payload):
        return payload[::-1]


CELERY_TASKS = """\
import os
from celery import Celery

app = Celery("peers_celery", broker=os.environ["PEERS_CELERY_BROKER"], backend=os.environ["PEERS_CELERY_BACKEND"])
app.conf.broker_connection_retry_on_startup = True


@app.task
def echo(payload):
    return payload
"""

RQ_TASKS = """\
def echo(payload):
    return payload
"""


def python_tool(name):
    """A command of the virtual environment this driver runs in."""
    return str(Path(sys.executable).parent / name)


class CelerySystem(System):
    key = "celery"
    label = "Celery (Redis broker and result backend), prefork × 4"

    def __init__(self, options, processes):
        super().__init__(options, processes)
        (options.state / "peers_celery.py").write_text(CELERY_TASKS)
        # Databases of their own: 1 and 2 (jobgate's keys are in 0, RQ's in 3).
        os.environ["PEERS_CELERY_BROKER"] = f"redis://{options.redis}/1"
        os.environ["PEERS_CELERY_BACKEND"] = f"redis://{options.redis}/2"
        sys.path.insert(0, str(options.state))
        import celery
        import peers_celery

        self.version = celery.__version__
        self.task = peers_celery.echo

    def start_workers(self):
        self.processes.start(self.key, [
            python_tool("celery"), "-A", "peers_celery", "worker", "--pool", "prefork", "--concurrency", "4",
            "--loglevel", "WARNING",
        ], cwd=self.options.state, env=dict(os.environ, PYTHONPATH=str(self.options.state)))

    def submit(self, payload):
        return self.task.delay(payload)

    def collect(self, handle):
        return handle.get(timeout=RESULT_TIMEOUT_S)


class RQSystem(System):
    key = "rq"
    label = "RQ, 4 workers (`job.latest_result()` polled every 1 ms)"

    def __init__(self, options, processes):
        super().__init__(options, processes)
        (options.state / "peers_rq.py").write_text(RQ_TASKS)
        import redis
        import rq

        self.version = rq.__version__
        self.url = f"redis://{options.redis}/3"
        self.queue = rq.Queue("peers", connection=redis.Redis.from_url(self.url))

    def start_workers(self):
        for number in range(4):
            self.processes.start(f"{self.key}-{number}", [
                python_tool("rq"), "worker", "--url", self.url, "--path", str(self.options.state),
                "--logging_level", "WARNING", "peers",
            ])

    def submit(self, payload):
        return self.queue.enqueue("peers_rq.echo", payload)

    def collect(self, job):
        # What RQ's documentation shows: ask for the result until it is there (`job.result` before RQ 3).
        deadline = time.monotonic() + RESULT_TIMEOUT_S
        while (result := job.latest_result()) is None:
            if time.monotonic() > deadline:
                raise BenchError(f"RQ job {job.id} has no result after {RESULT_TIMEOUT_S} s")
            time.sleep(RQ_POLL_INTERVAL_S)
        if result.type != result.Type.SUCCESSFUL:
            raise BenchError(f"RQ job {job.id} failed: {result.exc_string}")
        return result.return_value


SYSTEMS = [JobgateCommand, JobgatePHP, CelerySystem, RQSystem]


def readme_example(name):
    """The code block after `<!-- example: name -->` in the README, as the test suite runs it."""
    text = (REPOSITORY / "README.md").read_text()
    rest = text.split(f"<!-- example: {name} -->", 1)[1]
    block = rest.split("```", 1)[1].split("\n", 1)[1]
    return block.split("\n```", 1)[0] + "\n"


# MARK: measuring


def run_window(system, jobs, in_flight):
    """Submits `jobs`, at most `in_flight` unanswered, collecting the oldest first; checks every result."""
    pending = deque()

    def collect_oldest():
        payload, handle = pending.popleft()
        result = system.collect(handle)
        if result != system.expected(payload):
            raise BenchError(f"{system.key}: the job of {payload!r} returned {result!r}")

    for payload in jobs:
        if len(pending) == in_flight:
            collect_oldest()
        pending.append((payload, system.submit(payload)))
    while pending:
        collect_oldest()


def percentile(sorted_values, fraction):
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


def measure(system, options):
    server_pids = [options.server_pids[name] for name in system.servers]
    system.start_workers()
    system.connect()
    try:
        # Warm up (workers started, pool children forked, connections open) until every job comes back.
        run_window(system, payloads(options.in_flight), options.in_flight)
        system.processes.check_running()

        jobs = payloads(options.jobs)
        workers = system.processes.pids()
        server_before, workers_before = cpu_seconds(server_pids), cpu_seconds(workers)
        started = time.perf_counter()
        run_window(system, jobs, options.in_flight)
        elapsed = time.perf_counter() - started
        server_cpu, worker_cpu = cpu_seconds(server_pids) - server_before, cpu_seconds(workers) - workers_before

        latencies = []
        for payload in payloads(options.latency_samples):
            submitted = time.perf_counter()
            result = system.collect(system.submit(payload))
            latencies.append((time.perf_counter() - submitted) * 1000)
            if result != system.expected(payload):
                raise BenchError(f"{system.key}: the job of {payload!r} returned {result!r}")
        latencies.sort()
    except Exception as error:
        raise BenchError(f"{system.key}: {error!r}\n{system.processes.log_tail(system.key)}") from error
    finally:
        system.disconnect()
        system.processes.stop_all()
    return {
        "jobs_per_s": options.jobs / elapsed,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "server_cpu_s_per_1000": server_cpu / options.jobs * 1000,
        "worker_cpu_s_per_1000": worker_cpu / options.jobs * 1000,
    }


# MARK: the report


def milliseconds(value):
    return f"{value:.3g} ms" if value < 100 else f"{value:,.0f} ms"


def table(systems, medians):
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for system in systems:
        m = medians[system.key]
        cells = [system.label, f"{m['jobs_per_s']:,.0f}", milliseconds(m["p50_ms"]), milliseconds(m["p99_ms"]),
                 f"{m['server_cpu_s_per_1000']:.2f} + {m['worker_cpu_s_per_1000']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def program_version(argv):
    """The first line a program prints when asked for its version, from the first word with a digit on."""
    try:
        output = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "?"
    words = output.splitlines()[0].replace("v=", "").split() if output else []
    return next((" ".join(words[i:]) for i, word in enumerate(words) if word[:1].isdigit()), "?")


def versions(systems, options):
    found = {
        "jobgate": program_version([options.jobgate, "--version"]),
        "redis-server": program_version(["redis-server", "--version"]).split()[0],
        "gearmand": program_version([options.gearmand, "--version"]).split()[0],
    }
    keys = [system.key for system in systems]
    if "jobgate-php" in keys:
        found["php"] = program_version(["php", "-r", "echo PHP_VERSION;"])
    for system in systems:
        if hasattr(system, "version"):
            found[system.key] = system.version
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=Path, required=True, help="the run's folder (logs, pids, task modules)")
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--gearman", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--jobgate", required=True, help="the jobgate executable (for `jobgate worker`)")
    parser.add_argument("--gearmand", default="gearmand", help="the gearmand executable (for its version)")
    parser.add_argument("--server", action="append", default=[], help="NAME=PID of a server bench-peers.sh started")
    parser.add_argument("--only", default="jobgate-cat,jobgate-php,celery,rq",
                        help="comma-separated systems; `jobgate` means both jobgate rows")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--latency-samples", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="also write every round's figures to this file")
    options = parser.parse_args()
    options.server_pids = {name: int(pid) for name, pid in (entry.split("=", 1) for entry in options.server)}
    (options.state / "logs").mkdir(exist_ok=True)
    (options.state / "pids").mkdir(exist_ok=True)

    wanted = set(options.only.split(","))
    chosen = [cls for cls in SYSTEMS if cls.key in wanted or cls.key.split("-")[0] in wanted]
    unknown = wanted - {cls.key for cls in SYSTEMS} - {cls.key.split("-")[0] for cls in SYSTEMS}
    if unknown or not chosen:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; systems: {', '.join(c.key for c in SYSTEMS)}")

    processes = RecordedProcesses(options.state)
    try:
        systems = [cls(options, processes) for cls in chosen]
        rounds = {system.key: [] for system in systems}
        for number in range(options.rounds):
            # Alternate the order: whatever the machine does over time falls on every system alike.
            order = systems if number % 2 == 0 else systems[::-1]
            for system in order:
                figures = measure(system, options)
                rounds[system.key].append(figures)
                log(f"round {number + 1}/{options.rounds} {system.key}: " + ", ".join(
                    f"{name} {value:.3f}" for name, value in figures.items()))
    except BenchError as error:
        log(f"bench-peers: {error}")
        return 1
    finally:
        processes.stop_all()

    medians = {key: {name: statistics.median(r[name] for r in figures) for name in figures[0]}
               for key, figures in rounds.items()}
    found = versions(systems, options)
    print(f"{options.jobs:,} jobs of {PAYLOAD_BYTES} bytes, {options.in_flight} in flight; latency: "
          f"{options.latency_samples:,} jobs one at a time, submit to result; medians of {options.rounds} "
          f"round(s) in alternating order")
    print("versions: " + ", ".join(f"{name} {version}" for name, version in found.items()))
    print()
    print(table(systems, medians))
    if options.json:
        options.json.write_text(json.dumps({
            "jobs": options.jobs, "in_flight": options.in_flight, "latency_samples": options.latency_samples,
            "versions": found, "rounds": rounds, "medians": medians,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
