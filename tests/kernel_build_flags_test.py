#!/usr/bin/env python3
"""kernel_build_flags_test.py: every source of the library was compiled as semantics 1.1.7 says.

The kernels' bits are those of plain IEEE arithmetic, so the command line that built each source
under src/ (from the build's compile_commands.json) must leave no fast-math option in effect and,
for C++, turn off the contraction of a multiply and an add into one FMA; for CUDA, keep
subnormals (-ftz=false) and IEEE division and square root. "In effect" means the last of
contradicting flags: a -ffast-math in CMAKE_CXX_FLAGS undone by a later -fno-fast-math is fine.
For C++ the compiler itself is asked too: the same command, preprocessing only, must not define
__FAST_MATH__ or a non-zero __FINITE_MATH_ONLY__.

Usage: kernel_build_flags_test.py BUILD/compile_commands.json SOURCE_DIR/src
"""
import json
import os
import shlex
import subprocess
import sys


def last_value(args, prefixes, default):
    """The value of the last flag starting with one of `prefixes` (`-x=V`), else `default`."""
    value = default
    for a in args:
        for p in prefixes:
            if a.startswith(p):
                value = a[len(p):]
    return value


def fast_math_on(args):
    """Whether a fast-math flag is in effect: one given and not undone by a later -fno-fast-math."""
    on = False
    for a in args:
        if a in ("-ffast-math", "-Ofast", "-funsafe-math-optimizations", "-ffinite-math-only"):
            on = True
        elif a == "-fno-fast-math":
            on = False
    return on


def cxx_problems(entry, args):
    problems = []
    if fast_math_on(args):
        problems.append("a fast-math option is in effect")
    contract = last_value(args, ["-ffp-contract="], "fast (GCC's default in GNU mode)")
    if contract != "off":
        problems.append(f"-ffp-contract is {contract}, not off")
    # Ask the compiler: preprocess the same command, printing the macros it defines.
    cmd = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("-o", "-MF", "-MT", "-MQ"):
            skip = True
            continue
        if a in ("-c", "-MD", "-MMD") or a == entry["file"]:
            continue
        cmd.append(a)
    cmd += ["-E", "-dM", entry["file"], "-o", "-"]
    out = subprocess.run(cmd, cwd=entry["directory"], capture_output=True, text=True)
    if out.returncode != 0:
        problems.append("preprocessing failed: " + out.stderr.strip()[:300])
    else:
        macros = dict(
            (line.split(" ", 2) + [""])[1:3] for line in out.stdout.splitlines() if line.startswith("#define ")
        )
        if "__FAST_MATH__" in macros:
            problems.append("the compiler defines __FAST_MATH__")
        if macros.get("__FINITE_MATH_ONLY__", "0") not in ("0", ""):
            problems.append("the compiler defines __FINITE_MATH_ONLY__ " + macros["__FINITE_MATH_ONLY__"])
    return problems


def cuda_problems(args):
    problems = []
    if any(a in ("--use_fast_math", "-use_fast_math") for a in args):
        problems.append("--use_fast_math is given")
    for flag, want in (("ftz", "false"), ("prec-div", "true"), ("prec-sqrt", "true")):
        value = last_value(args, [f"-{flag}=", f"--{flag}="], None)
        if value != want:
            problems.append(f"-{flag} is {value or 'not stated'}, not {want}")
    return problems


def main():
    db, src = sys.argv[1], os.path.realpath(sys.argv[2]) + "/"
    with open(db) as f:
        entries = json.load(f)
    checked = 0
    failures = []
    for e in entries:
        if not os.path.realpath(os.path.join(e["directory"], e["file"])).startswith(src):
            continue
        args = e["arguments"] if "arguments" in e else shlex.split(e["command"])
        name = os.path.realpath(os.path.join(e["directory"], e["file"]))[len(src):]
        problems = cuda_problems(args) if name.endswith(".cu") else cxx_problems(e, args)
        checked += 1
        for p in problems:
            failures.append(f"{name}: {p}")
    print(f"{checked} library sources checked")
    if checked == 0:
        print(f"no source under {src} in {db}")
        return 1
    for f in failures:
        print("FAIL " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
