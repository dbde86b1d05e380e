# Drives the stock `virsh console` under a pseudo-terminal (it refuses to
# run without one): attach, type, detach with ^], attach again, and check
# that a second client is turned away while one is attached. With "echo" as
# the third argument: attach, have the guest's shell echo a line, detach.
import os, pty, select, sys, time

uri, name = sys.argv[1], sys.argv[2]
read_only = len(sys.argv) > 3 and sys.argv[3] == "read-only"
echo_only = len(sys.argv) > 3 and sys.argv[3] == "echo"


def attach():
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp("virsh", ["virsh", "-c", uri, "console", name])
    return pid, fd


def until(fd, needle, seen, timeout=20):
    end = time.time() + timeout
    while needle not in seen[0]:
        ready, _, _ = select.select([fd], [], [], max(0, end - time.time()))
        if not ready:
            sys.exit(f"timed out waiting for {needle!r}; got {seen[0]!r}")
        try:
            seen[0] += os.read(fd, 4096)
        except OSError:
            sys.exit(f"console closed while waiting for {needle!r}; got {seen[0]!r}")
    seen[0] = seen[0][seen[0].index(needle) + len(needle):]


def status(pid):
    _, st = os.waitpid(pid, 0)
    return os.WEXITSTATUS(st)


if read_only:
    seen = [b""]
    pid, fd = attach()
    until(fd, b"read only access prevents virDomainOpenConsole", seen)
    print("read-only:", status(pid))
    sys.exit(0)

if echo_only:
    seen = [b""]
    pid, fd = attach()
    until(fd, b"Escape character", seen)
    time.sleep(0.3)
    os.write(fd, b"echo answered by the guest\r")
    # The guest echoes the typed line, then prints the words on a line of their own.
    until(fd, b"\r\nanswered by the guest\r\n", seen)
    os.write(fd, b"\x1d")
    print("echoed:", status(pid))
    sys.exit(0)

seen = [b""]
pid, fd = attach()
until(fd, b"Escape character", seen)
time.sleep(0.3)
os.write(fd, b"echo hello console\r")
until(fd, b"hello console\r\n", seen)
os.write(fd, b"\x1d")
print("first detach:", status(pid))

seen = [b""]
pid, fd = attach()
until(fd, b"Escape character", seen)
time.sleep(0.3)
os.write(fd, b"echo again\r")
until(fd, b"again\r\n", seen)

other = [b""]
pid2, fd2 = attach()
until(fd2, b"Active console session exists for this domain", other)
print("second client:", status(pid2))

os.write(fd, b"\x1d")
print("second detach:", status(pid))
