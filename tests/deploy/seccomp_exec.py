#!/usr/bin/python3
"""Runs a command under a seccomp profile in the OCI / Kubernetes Localhost JSON format, the way a
container runtime would: the default action for every syscall not listed, the listed ones allowed.

    seccomp_exec.py PROFILE [--deny NAME,NAME] -- COMMAND ARGS...

--deny removes syscalls from the allowed list (e.g. io_uring_setup, to act like a RuntimeDefault
profile that blocks io_uring). Needs Debian's python3-seccomp (libseccomp's own binding), hence
/usr/bin/python3. Exit code 3 on a bad profile.
"""
import errno
import json
import os
import sys

import seccomp


def die(msg):
    print(f"seccomp_exec: {msg}", file=sys.stderr)
    sys.exit(3)


def main(argv):
    if "--" not in argv or len(argv) < 4:
        die("usage: seccomp_exec.py PROFILE [--deny a,b] -- COMMAND ARGS...")
    split = argv.index("--")
    opts, cmd = argv[1:split], argv[split + 1:]
    profile_path, deny = opts[0], set()
    if len(opts) == 3 and opts[1] == "--deny":
        deny = set(opts[2].split(","))
    elif len(opts) != 1:
        die("bad options")
    with open(profile_path) as f:
        prof = json.load(f)
    if prof.get("defaultAction") != "SCMP_ACT_ERRNO":
        die("expected defaultAction SCMP_ACT_ERRNO (an allow list)")
    ret = prof.get("defaultErrnoRet", errno.EPERM)
    filt = seccomp.SyscallFilter(defaction=seccomp.ERRNO(ret))
    allowed = 0
    for rule in prof.get("syscalls", []):
        if rule.get("action") != "SCMP_ACT_ALLOW" or rule.get("args"):
            die(f"unsupported rule {rule}")
        for name in rule["names"]:
            if name in deny:
                continue
            try:
                filt.add_rule(seccomp.ALLOW, name)
            except (RuntimeError, ValueError) as e:
                # Names that do not exist on this architecture (open on aarch64) are skipped, as
                # runtimes do; a name unknown to libseccomp everywhere is an error.
                try:
                    seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
                except Exception:
                    die(f"unknown syscall {name!r}: {e}")
            allowed += 1
    filt.load()
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv)
