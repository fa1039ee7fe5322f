"""USDT argument specs and module-info text: the parsers on their own, with the forms compilers emit."""

from __future__ import annotations

import pytest

from gotel.golang.buildinfo import Module, parse_modinfo
from gotel.golang.usdt import ProbeArg, parse_arg


@pytest.mark.parametrize(("spec", "want"), [
    ("-8@%rbx", ProbeArg("-8@%rbx", 8, True, "reg", reg="rbx")),
    ("8@%rbp", ProbeArg("8@%rbp", 8, False, "reg", reg="rbp")),
    ("-4@%ebp", ProbeArg("-4@%ebp", 4, True, "reg", reg="rbp")),
    ("1@%r12b", ProbeArg("1@%r12b", 1, False, "reg", reg="r12")),
    ("-2@%r13w", ProbeArg("-2@%r13w", 2, True, "reg", reg="r13")),
    ("4@%r9d", ProbeArg("4@%r9d", 4, False, "reg", reg="r9")),
    ("1@%al", ProbeArg("1@%al", 1, False, "reg", reg="rax")),
    ("-4@-20(%rbp)", ProbeArg("-4@-20(%rbp)", 4, True, "mem", reg="rbp", offset=-20)),
    ("8@(%rax)", ProbeArg("8@(%rax)", 8, False, "mem", reg="rax")),
    ("8@16(%rax,%rbx,4)", ProbeArg("8@16(%rax,%rbx,4)", 8, False, "mem", reg="rax", offset=16, index="rbx", scale=4)),
    ("4@counter+8(%rip)", ProbeArg("4@counter+8(%rip)", 4, False, "mem", reg="rip", offset=8, symbol="counter")),
    ("-4@$-5", ProbeArg("-4@$-5", 4, True, "const", value=-5)),
    ("%rdi", ProbeArg("%rdi", 8, True, "reg", reg="rdi")),
])
def test_usdt_argument_specs(spec: str, want: ProbeArg) -> None:
    assert parse_arg(spec) == want


@pytest.mark.parametrize(("spec", "msg"), [("3@%rax", "size 3"), ("8@%xyz", "unknown register"),
                                           ("8@[rax]", "not a register")])
def test_bad_usdt_argument_specs_say_why(spec: str, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        parse_arg(spec)


def test_modinfo_with_replacements_and_quoted_settings() -> None:
    text = "\n".join([
        "path\texample.com/app/cmd/app",
        "mod\texample.com/app\tv1.4.0\th1:abc=",
        "dep\tgoogle.golang.org/grpc\tv1.60.1\th1:grpc=",
        "dep\tgolang.org/x/net\tv0.20.0\th1:net=",
        "=>\tgolang.org/x/net\tv0.21.0\th1:net2=",
        "dep\texample.com/local\tv0.0.0",
        "=>\t../local\t",
        'build\t-ldflags="-s -w -X main.v=1"',
        "build\tCGO_ENABLED=0",
        "build\tvcs.revision=0123abcd",
    ])
    bi = parse_modinfo("go1.21.5", text)
    assert bi.path == "example.com/app/cmd/app"
    assert bi.main == Module("example.com/app", "v1.4.0", "h1:abc=")
    assert bi.module_version("google.golang.org/grpc") == "v1.60.1"
    assert bi.module_version("golang.org/x/net") == "v0.21.0"  # the replacement's version wins
    assert bi.dep("golang.org/x/net") == Module("golang.org/x/net", "v0.20.0", "h1:net=",
                                                Module("golang.org/x/net", "v0.21.0", "h1:net2="))
    assert bi.module_version("example.com/local") == "v0.0.0"  # a directory replacement has no version
    assert bi.dep("example.com/local").replace == Module("../local", "")  # type: ignore[union-attr]
    assert bi.settings == {"-ldflags": "-s -w -X main.v=1", "CGO_ENABLED": "0", "vcs.revision": "0123abcd"}
    assert bi.module_version("not/there") is None
