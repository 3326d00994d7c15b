#!/usr/bin/env python3
"""The direct-spawn floor of a cold start, for benches/proxy.sh part 5.

Usage: spawn.py PORT PROGRAM [ARGS...]
Starts PROGRAM (which is to listen on 127.0.0.1:PORT), tries to connect every millisecond
until the port accepts, then sends one `GET /` and reads the whole answer (the server closes
the connection after it). Prints "listen_ms=A answer_ms=B", both counted from just before the
process is spawned, then stops the process (TERM, then KILL after 5 s) and waits for it.
The environment is passed on as it is (the caller sets what the program reads).
"""
import socket
import subprocess
import sys
import time


def main():
    port = int(sys.argv[1])
    argv = sys.argv[2:]
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = start + 10
        while True:
            sock = socket.socket()
            try:
                sock.connect(("127.0.0.1", port))
                break
            except OSError:
                sock.close()
                if child.poll() is not None:
                    sys.exit(f"spawn.py: {argv[0]} exited with {child.returncode} before listening")
                if time.perf_counter() > deadline:
                    sys.exit(f"spawn.py: nothing listens on port {port} after 10 s")
                time.sleep(0.001)
        listening = time.perf_counter()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        answered = time.perf_counter()
        sock.close()
        if not answer.startswith(b"HTTP/1.1 200"):
            sys.exit(f"spawn.py: the answer was not a 200: {answer[:80]!r}")
        print(f"listen_ms={(listening - start) * 1000:.3f} answer_ms={(answered - start) * 1000:.3f}")
    finally:
        child.terminate()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


if __name__ == "__main__":
    main()
