"""htpasswd files as basicauth's server side reads them: `user:hash` lines, hashes in the schemes
Apache's htpasswd and openssl write: plain text, `{SHA}`, `{SSHA}`, `$apr1$` (MD5), `$5$`/`$6$`
(SHA-crypt), and `$2y$` bcrypt when the `bcrypt` package is installed. A line gotel cannot verify is
an error naming its line at start, never an account that silently cannot log in."""

from __future__ import annotations

import base64
import hashlib
import hmac

_ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class HtpasswdError(ValueError):
    pass


def _to64(v: int, n: int) -> str:
    out = []
    for _ in range(n):
        out.append(_ITOA64[v & 0x3F])
        v >>= 6
    return "".join(out)


def apr1(password: bytes, salt: bytes) -> str:
    """Apache's MD5-crypt (`$apr1$salt$hash`)."""
    magic = b"$apr1$"
    alt = hashlib.md5(password + salt + password).digest()
    ctx = hashlib.md5(password + magic + salt)
    n = len(password)
    while n > 0:
        ctx.update(alt[: min(16, n)])
        n -= 16
    i = len(password)
    while i:
        ctx.update(b"\0" if i & 1 else password[:1])
        i >>= 1
    final = ctx.digest()
    for r in range(1000):
        c = hashlib.md5(password if r & 1 else final)
        if r % 3:
            c.update(salt)
        if r % 7:
            c.update(password)
        c.update(final if r & 1 else password)
        final = c.digest()
    out = ""
    for a, b, d in ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)):
        out += _to64((final[a] << 16) | (final[b] << 8) | final[d], 4)
    out += _to64(final[11], 2)
    return f"$apr1${salt.decode()}${out}"


def _sha_crypt(password: bytes, setting: str) -> str:
    """SHA-crypt ($5$ SHA-256, $6$ SHA-512), as glibc's crypt() computes it."""
    parts = setting.split("$")
    ident = parts[1]
    rounds, custom = 5000, False
    rest = parts[2:]
    if rest and rest[0].startswith("rounds="):
        rounds = max(1000, min(999_999_999, int(rest[0][7:])))
        custom = True
        rest = rest[1:]
    salt = (rest[0] if rest else "")[:16].encode()
    h = hashlib.sha256 if ident == "5" else hashlib.sha512
    size = 32 if ident == "5" else 64
    b = h(password + salt + password).digest()
    a = h(password + salt)
    n = len(password)
    while n > size:
        a.update(b)
        n -= size
    a.update(b[:n])
    i = len(password)
    while i:
        a.update(b if i & 1 else password)
        i >>= 1
    da = a.digest()
    dp = h(password * len(password)).digest()
    p = (dp * (len(password) // size + 1))[: len(password)]
    ds = h(salt * (16 + da[0])).digest()
    s = (ds * (len(salt) // size + 1))[: len(salt)]
    c = da
    for r in range(rounds):
        x = h(p if r & 1 else c)
        if r % 3:
            x.update(s)
        if r % 7:
            x.update(p)
        x.update(c if r & 1 else p)
        c = x.digest()
    if ident == "5":
        order = [(0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14), (15, 25, 5), (6, 16, 26),
                 (27, 7, 17), (18, 28, 8), (9, 19, 29)]
        out = "".join(_to64((c[x] << 16) | (c[y] << 8) | c[z], 4) for x, y, z in order)
        out += _to64((c[31] << 8) | c[30], 3)
    else:
        order = [(0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
                 (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
                 (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19),
                 (62, 20, 41)]
        out = "".join(_to64((c[x] << 16) | (c[y] << 8) | c[z], 4) for x, y, z in order)
        out += _to64(c[63], 2)
    head = f"${ident}$" + (f"rounds={rounds}$" if custom else "") + salt.decode()
    return f"{head}${out}"


def _bcrypt(password: bytes, stored: str) -> bool:
    import bcrypt  # optional: raises ImportError, reported at load

    return bool(bcrypt.checkpw(password, stored.encode()))


def check_scheme(stored: str) -> str:
    """'' when gotel can verify this hash; else why not."""
    if stored.startswith(("$2y$", "$2a$", "$2b$")):
        try:
            import bcrypt  # noqa: F401
        except ImportError:
            return "a bcrypt hash needs the Python package bcrypt (pip install bcrypt), or use htpasswd -m / -s"
        return ""
    if stored.startswith("$") and not stored.startswith(("$apr1$", "$5$", "$6$")):
        return f"unsupported hash scheme {stored.split('$')[1]!r} (plain, {{SHA}}, {{SSHA}}, $apr1$, $5$, $6$, $2y$)"
    return ""


def verify(password: str, stored: str) -> bool:
    pw = password.encode()
    if stored.startswith("{SHA}"):
        got = base64.b64encode(hashlib.sha1(pw).digest()).decode()
        return hmac.compare_digest(got, stored[5:])
    if stored.startswith("{SSHA}"):
        raw = base64.b64decode(stored[6:])
        digest, salt = raw[:20], raw[20:]
        return hmac.compare_digest(hashlib.sha1(pw + salt).digest(), digest)
    if stored.startswith("$apr1$"):
        salt = stored.split("$")[2].encode()
        return hmac.compare_digest(apr1(pw, salt), stored)
    if stored.startswith(("$5$", "$6$")):
        return hmac.compare_digest(_sha_crypt(pw, stored), stored)
    if stored.startswith(("$2y$", "$2a$", "$2b$")):
        return _bcrypt(pw, stored)
    return hmac.compare_digest(pw, stored.encode())  # plain text


def parse(text: str, where: str) -> dict[str, str]:
    """user -> stored hash; HtpasswdError names the line of a bad entry."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not user:
            raise HtpasswdError(f"{where} line {n}: expected user:password")
        why = check_scheme(stored)
        if why:
            raise HtpasswdError(f"{where} line {n} (user {user}): {why}")
        out[user] = stored
    return out
