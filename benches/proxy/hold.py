#!/usr/bin/env python3
"""Opens N client connections to HOST:PORT and holds them, for benches/proxy.sh.

Usage: hold.py HOST PORT N MODE [PATH]
  MODE bare:       connect and send nothing (a client that has not asked yet)
  MODE keepalive:  send one GET PATH on each, read the whole answer, then keep the connection
                   open and silent (an idle keep-alive client)
Prints "ready N OPEN" once every connection is made, then reads commands from stdin:
"check" prints "open K", how many the server has not closed; end of input closes them all.
"""
import select
import socket
import sys


def read_answer(sock):
    """Reads one HTTP/1.1 answer with a Content-Length; False if the server closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        body += chunk
    return True


def still_open(sock):
    # poll, not select: past 1,024 descriptors select cannot look.
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except OSError:
        return False


def main():
    host, port, count, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    path = sys.argv[5] if len(sys.argv) > 5 else "/"
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    socks = []
    failed = 0
    for _ in range(count):
        sock = socket.create_connection((host, port), timeout=10)
        if mode == "keepalive":
            sock.sendall(request)
            if not read_answer(sock):
                failed += 1
        socks.append(sock)
    print(f"ready {len(socks)} {len(socks) - failed}", flush=True)
    for line in sys.stdin:
        if line.strip() == "check":
            print(f"open {sum(1 for s in socks if still_open(s))}", flush=True)
    for sock in socks:
        sock.close()


if __name__ == "__main__":
    main()
