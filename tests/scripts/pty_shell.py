"""Drives `prefflow` (the interactive shell) through a real pseudo-terminal, RUNS times:
a first line read by the line editor, then a long statement cancelled with Ctrl-C typed at the
terminal (the kernel sends SIGINT), then a statement that must still run, then .quit. Fails
(exit 1, with what the terminal showed) if the shell dies, hangs, or exits non-zero.

Usage: python3 pty_shell.py PREFFLOW_BIN WORKDIR RUNS
"""
import os
import pty
import select
import sys
import time

binary, workdir, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])


class Terminal:
    """What the terminal showed, and how far the checks have read."""

    def __init__(self, fd, run):
        self.fd, self.run, self.seen, self.at = fd, run, b"", 0

    def expect(self, needle, timeout):
        """Waits for `needle` after what earlier checks matched."""
        end = time.time() + timeout
        while True:
            found = self.seen.find(needle, self.at)
            if found >= 0:
                self.at = found + len(needle)
                return
            if time.time() >= end:
                break
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            self.seen += chunk
        sys.exit(f"run {self.run}: never saw {needle!r}; the terminal showed:\n{self.seen[-3000:].decode(errors='replace')}")


for run in range(runs):
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(workdir)
        os.execv(binary, [binary])
    t = Terminal(fd, run)
    t.expect(b"prefflow> ", 60)
    os.write(fd, b"SELECT 1 AS one;\r")
    t.expect(b"| one |", 30)
    t.expect(b"prefflow> ", 30)
    os.write(fd, b"SELECT count(*) FROM generate_series(1, 100000000000);\r")
    # Vary the moment of the Ctrl-C from run to run.
    time.sleep(0.3 + 0.1 * (run % 5))
    os.write(fd, b"\x03")
    t.expect(b"cancelled", 30)
    t.expect(b"prefflow> ", 30)
    os.write(fd, b"SELECT 40 + 2 AS answer;\r")
    t.expect(b"| 42 ", 30)
    os.write(fd, b".quit\r")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        sys.exit(f"run {run}: the shell ended with status {status}; the terminal showed:\n{t.seen[-3000:].decode(errors='replace')}")
print(f"{runs} runs through a pseudo-terminal: every Ctrl-C cancelled its statement and the shell went on")
