#!/usr/bin/env python3
"""A jobgate client in plain Python (standard library only): copy the Client class into your project.

The protocol (Sources/GatewayProtocol/PROTOCOL.md) in brief: you send one-line requests, the gateway answers
each with one line, in order. A line ending in a byte count is followed by exactly that many raw bytes and a
line break (a "data block"), so payloads and results may contain any bytes. After WATCH the gateway also pushes
"EVENT ..." lines; they can arrive before the reply of a later request, so read_reply() keeps them aside.

Demo:
  client.py HOST PORT [--auth SECRET] [--tls-ca FILE] submit FUNCTION PAYLOAD [WAIT_MS]   submit, watch, then wait
  client.py HOST PORT [--auth SECRET] [--tls-ca FILE] wait ID WAIT_MS
  client.py HOST PORT [--auth SECRET] [--tls-ca FILE] subscribe FUNCTION [FROM] [COUNT]   every job of FUNCTION that
      ends after cursor FROM (now, start, or a cursor printed before), as `<cursor> <id> <kind> <hex>` lines;
      COUNT: stop after that many
--tls-ca (or JOBGATE_TLS_CA) speaks TLS to a gateway serving it, trusting the authorities in FILE; JOBGATE_TLS=1
alone trusts the system's. --tls-cert FILE --tls-key FILE add a client certificate (mutual TLS).
PAYLOAD is text, or hex:<digits> for binary. Results and failure reasons print as hex so any bytes print
safely. Exit status: 0 done, 1 failed/expired/timed out, 2 an ERR reply or a broken connection.
"""
import os
import socket
import ssl
import sys


class JobgateError(Exception):
    """An `ERR <CODE> <text>` reply (code e.g. NOT_FOUND, DENIED, NOAUTH), or code PROTOCOL for a broken reply."""

    def __init__(self, code, text):
        super().__init__(f"{code} {text}")
        self.code, self.text = code, text


class Client:
    def __init__(self, host, port, timeout=30.0, tls=None):
        """tls: None for plain TCP, or an ssl.SSLContext (e.g. ssl.create_default_context(cafile=...)); the
        gateway's certificate is checked against host, a name or an IP address."""
        self.sock = socket.create_connection((host, port), timeout=timeout)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=host)
        self.file = self.sock.makefile("rb")  # buffered: readline() for lines, read(n) for exact byte counts
        self.events = []  # events that arrived while we waited for a reply

    def close(self):
        self.file.close()
        self.sock.close()

    # -- reading -----------------------------------------------------------------------------------------

    def _line(self):
        line = self.file.readline()
        if not line.endswith(b"\n"):
            raise JobgateError("PROTOCOL", "connection closed")
        words = line.rstrip(b"\r\n").decode().split()
        if words and words[0].startswith("@"):  # a tag (only if you tag requests to pipeline them)
            words = words[1:]
        return words

    def _block(self, count):
        """Reads a data block: exactly `count` raw bytes, then the line break after them."""
        data = self.file.read(count)
        if len(data) != count or self.file.readline() not in (b"\r\n", b"\n"):
            raise JobgateError("PROTOCOL", "truncated data block")
        return data

    def _message(self):
        """One reply or event as (words, data); data is the block's bytes, or None if the line has none."""
        words = self._line()
        is_event = words[:1] == ["EVENT"]
        kind = words[2] if is_event and len(words) > 2 else words[0] if words else ""
        # Where the byte count is: options such as cursor= may follow it.
        count_at = ({"PROGRESS": 5, "DONE": 3, "FAILED": 3} if is_event else {"DONE": 2, "FAILED": 2, "STATS": 1}).get(kind)
        return words, self._block(int(words[count_at])) if count_at is not None else None

    def read_reply(self):
        """The next reply, keeping pushed events for next_event(); raises JobgateError on ERR."""
        while True:
            words, data = self._message()
            if words[:1] == ["EVENT"]:
                self.events.append((words, data))
            elif words[:1] == ["ERR"]:
                raise JobgateError(words[1], " ".join(words[2:]))
            else:
                return words, data

    def next_event(self):
        """The next pushed event as (id, kind, words after the kind, data), e.g. kind PROGRESS or DONE."""
        words, data = self.events.pop(0) if self.events else self._message()
        if words[:1] != ["EVENT"]:
            raise JobgateError("PROTOCOL", "expected an event, got " + " ".join(words))
        return words[1], words[2], words[3:], data

    # -- commands ----------------------------------------------------------------------------------------

    def request(self, line, data=None):
        self.sock.sendall(line.encode() + b"\r\n" + (data + b"\r\n" if data is not None else b""))
        return self.read_reply()

    def auth(self, secret):
        self.request("AUTH " + secret)

    def submit(self, function, payload):
        """Queues a job; returns its id. The byte count goes on the line, the raw payload right after it."""
        words, _ = self.request(f"SUBMIT {function} {len(payload)}", payload)
        return words[1]  # CREATED <id>, or EXISTS <id> for a unique key already queued

    def watch(self, job_id):
        """Starts pushing events for the job; returns (state, numerator, denominator) right now."""
        words, _ = self.request("WATCH " + job_id)
        return words[2], int(words[3]), int(words[4])

    def subscribe(self, function, since="now"):
        """Pushes the end of every job of `function` that ended after `since` (a cursor from next_ended(), "start"
        for all the gateway's log holds, or "now"), then of every job that ends from now on, each once."""
        self.request(f"SUBSCRIBE {function} from={since}")

    def next_ended(self):
        """The next ended job of a subscription as (cursor, id, kind, data): kind DONE, FAILED or EXPIRED. Keep the
        cursor of the last one you handled: subscribe(function, cursor) resumes right after it, on any gateway."""
        job_id, kind, words, data = self.next_event()
        cursor = next((word[len("cursor="):] for word in words if word.startswith("cursor=")), None)
        return cursor, job_id, kind, data

    def wait(self, job_id, timeout_ms):
        """Blocks until the job ends: ("DONE", result), ("FAILED", reason), ("EXPIRED", None), or
        ("TIMEOUT", None) when timeout_ms passes first. The socket timeout must exceed timeout_ms."""
        words, data = self.request(f"WAIT {job_id} {timeout_ms}")
        return words[0], data


def main(argv):
    args = argv[1:]
    secret = None
    if "--auth" in args:
        i = args.index("--auth")
        secret = args[i + 1]
        del args[i:i + 2]
    options = {}
    for name in ("--tls-ca", "--tls-cert", "--tls-key"):
        if name in args:
            i = args.index(name)
            options[name] = args[i + 1]
            del args[i:i + 2]
    ca = options.get("--tls-ca", os.environ.get("JOBGATE_TLS_CA"))
    tls = None
    if ca is not None or os.environ.get("JOBGATE_TLS") == "1":
        tls = ssl.create_default_context(cafile=ca)
        if "--tls-cert" in options:
            tls.load_cert_chain(options["--tls-cert"], options.get("--tls-key"))
    host, port, command, rest = args[0], int(args[1]), args[2], args[3:]
    wait_ms = int(rest[2]) if command == "submit" and len(rest) > 2 else int(rest[1]) if command == "wait" else 5000
    if command == "subscribe":
        wait_ms = 3600 * 1000  # an idle function may end nothing for long
    client = None
    try:
        client = Client(host, port, timeout=wait_ms / 1000 + 30, tls=tls)
        if secret is not None:
            client.auth(secret)
        if command == "subscribe":
            client.subscribe(rest[0], rest[1] if len(rest) > 1 else "now")
            print("SUBSCRIBED", rest[0], flush=True)
            for _ in range(int(rest[2])) if len(rest) > 2 else iter(int, 1):
                cursor, job_id, kind, data = client.next_ended()
                print(cursor, job_id, kind, data.hex() if data is not None else "", flush=True)
            return 0
        if command == "submit":
            payload = bytes.fromhex(rest[1][4:]) if rest[1].startswith("hex:") else rest[1].encode()
            job_id = client.submit(rest[0], payload)
            print("CREATED", job_id, flush=True)
            print("WATCHING", job_id, *client.watch(job_id), flush=True)
            while True:  # events until the terminal one (DONE, FAILED or EXPIRED)
                _, kind, words, data = client.next_event()
                if kind == "PROGRESS":
                    print("PROGRESS", words[0], words[1], data.decode(errors="replace"), flush=True)
                else:
                    print(kind, data.hex() if data is not None else "", flush=True)
                    break
        else:
            job_id = rest[0]
        outcome, data = client.wait(job_id, wait_ms)  # after a watch it answers at once: the job has ended
        print("WAIT", outcome, data.hex() if data is not None else "", flush=True)
        return 0 if outcome == "DONE" else 1
    except (JobgateError, OSError) as error:
        print("error:", error, file=sys.stderr)
        return 2
    finally:
        if client is not None:
            client.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
