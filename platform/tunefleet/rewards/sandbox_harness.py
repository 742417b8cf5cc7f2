"""The two halves of a `code_exec` test run, each in its own sandbox (see sandbox.py).

The *sample* sandbox runs the completion's code; when its top level has returned, it sends
a manifest of the names it defined and then serves requests. The *tests* sandbox runs the
row's tests, where every name from the manifest is a plain value or a `Remote` stand-in
whose calls (attribute reads, iteration, ...) are requests to the sample. The verdict is
the tests process's exit status, and nothing of the sample's runs there: what crosses back
is decoded by `decode_reply` into plain data only (None, bool, int, float, complex, str,
bytes, list, tuple, dict, set, frozenset) or new `Remote` handles. So an object whose
`__eq__` is always true arrives as a handle, equal only to itself; patched builtins,
`unittest`, test functions or frames stay in the sample's own process; an early exit or a
crash before the manifest, or during a call, leaves the tests nothing to read (`SampleGone`,
which `except Exception` cannot swallow).

This file is plain stdlib Python, pasted into the sandbox prelude (not imported there).
Wire format: 4-byte big-endian length, then JSON. Values are JSON scalars or tagged lists
`[tag, payload]` (floats as `float.hex`, dicts as `[key, value]` pairs, handles as
`["ref", n]`).
"""

import builtins
import json
import operator
import os
import sys
import traceback
import types

MAX_FRAME = 16 << 20
_SCALARS = (type(None), bool, int, str)
_SEQUENCES = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}
_SEQUENCE_TAGS = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset"}


class SampleGone(BaseException):
    """The sample died, exited, or broke the protocol: a BaseException, so a test's
    `except Exception` cannot turn it into a pass."""


class SampleError(Exception):
    """The sample's code raised an exception that is not a built-in one."""


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def _read_exact(fd, n):
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def frame(message):
    """`message` as one length-prefixed JSON frame (raises for values JSON cannot carry)."""
    data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    return len(data).to_bytes(4, "big") + data


def receive(fd):
    """The next JSON message on `fd`, or None at end of file."""
    head = _read_exact(fd, 4)
    if head is None:
        return None
    size = int.from_bytes(head, "big")
    if size > MAX_FRAME:
        raise SampleGone(f"a {size}-byte message from the sample (at most {MAX_FRAME})")
    body = _read_exact(fd, size)
    if body is None:
        return None
    return json.loads(body)


def encode(value, handle):
    """`value` in wire form; anything not plain data becomes `["ref", handle(value)]`.
    Exact type checks: an int or list subclass is the sample's own object, not data."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is float:
        return ["float", value.hex()]
    if kind is complex:
        return ["complex", [value.real.hex(), value.imag.hex()]]
    if kind is bytes:
        return ["bytes", value.hex()]
    if kind in _SEQUENCE_TAGS:
        return [_SEQUENCE_TAGS[kind], [encode(item, handle) for item in value]]
    if kind is dict:
        return ["dict", [[encode(k, handle), encode(v, handle)] for k, v in value.items()]]
    return ["ref", handle(value)]


def decode(wire, resolve):
    """A value from its wire form: only plain data, and `resolve(n)` for a handle."""
    kind = type(wire)
    if kind in _SCALARS or kind is float:
        return wire
    if kind is not list or len(wire) != 2 or type(wire[0]) is not str:
        raise SampleGone(f"not a value: {str(wire)[:200]}")
    tag, body = wire
    if tag in _SEQUENCES and type(body) is list:
        return _SEQUENCES[tag](decode(item, resolve) for item in body)
    if tag == "dict" and type(body) is list:
        return {decode(k, resolve): decode(v, resolve) for k, v in (_pair(p) for p in body)}
    if tag == "float" and type(body) is str:
        return float.fromhex(body)
    if tag == "complex" and type(body) is list and len(body) == 2 and all(type(x) is str for x in body):
        return complex(float.fromhex(body[0]), float.fromhex(body[1]))
    if tag == "bytes" and type(body) is str:
        return bytes.fromhex(body)
    if tag == "ref" and type(body) is int:
        return resolve(body)
    raise SampleGone(f"not a value: {str(wire)[:200]}")


def _pair(p):
    if type(p) is not list or len(p) != 2:
        raise SampleGone("not a dict item")
    return p


def new_main():
    """A fresh `__main__` module (unittest.main looks its tests up there)."""
    module = types.ModuleType("__main__")
    module.__builtins__ = builtins
    sys.modules["__main__"] = module
    return module


# ---------------------------------------------------------------- sample side (untrusted)
OPS = {"call": lambda obj, *a, **k: obj(*a, **k), "getattr": getattr, "setattr": setattr, "iter": iter,
       "next": next, "len": len, "bool": bool, "getitem": operator.getitem, "contains": operator.contains}


def serve(namespace, rfd, wfd):
    """Send the manifest of `namespace`, then answer requests until the tests hang up.
    Lists, dicts and sets passed in come back after each call, for in-place updates."""
    objects, refs = {}, {}

    def handle(obj):
        if id(obj) not in refs:
            refs[id(obj)] = len(objects)
            objects[len(objects)] = obj
        return refs[id(obj)]

    names = [[k, ["module", v.__name__] if isinstance(v, types.ModuleType) else encode(v, handle)]
             for k, v in namespace.items() if not k.startswith("__")]
    _write_all(wfd, frame(["ready", names]))
    while (request := receive(rfd)) is not None:
        op, ref, args, kwargs = request
        try:
            args = [decode(a, objects.__getitem__) for a in args]
            kwargs = {k: decode(v, objects.__getitem__) for k, v in kwargs}
            result = OPS[op](objects[ref], *args, **kwargs)
            changed = [[i, encode(a, handle)] for i, a in enumerate(args) if type(a) in (list, dict, set)]
            reply = frame(["ok", encode(result, handle), changed])
        except Exception as e:  # the tests see it raised; a BaseException ends the sample
            reply = frame(["raise", type(e).__name__, _text(e)])
        _write_all(wfd, reply)


def _text(error):
    try:
        return str(error)[:2000]
    except Exception:
        return "?"


# ---------------------------------------------------------------- tests side (trusted)
class Remote:
    """Stands for one of the sample's objects; every use is a request to the sample.
    Equality and hashing are by identity: the sample cannot make it equal anything."""

    __slots__ = ("_tf_ref",)
    link = None  # (rfd, wfd) to the sample, set by run_tests

    def __init__(self, ref):
        object.__setattr__(self, "_tf_ref", ref)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return request("getattr", self, name)

    def __setattr__(self, name, value):
        request("setattr", self, name, value)

    def __call__(self, *args, **kwargs):
        return request("call", self, *args, **kwargs)

    def __iter__(self):
        return request("iter", self)

    def __next__(self):
        return request("next", self)

    def __len__(self):
        return request("len", self)

    def __bool__(self):  # not via __len__: a linked-list node is true without one
        value = request("bool", self)
        if type(value) is not bool:
            raise TypeError("__bool__ should return bool")
        return value

    def __getitem__(self, key):
        return request("getitem", self, key)

    def __contains__(self, item):
        return request("contains", self, item)

    def __eq__(self, other):
        return type(other) is Remote and other._tf_ref == self._tf_ref

    def __hash__(self):
        return hash(("tf-remote", self._tf_ref))

    def __repr__(self):
        return f"<sample object #{self._tf_ref}>"


def _handle_of(value):
    if type(value) is Remote:
        return value._tf_ref
    raise TypeError(f"cannot pass {type(value).__name__} to the sample's code (only plain data and its own objects)")


def _raise_remote(name, message):
    error = getattr(builtins, name, None) if type(name) is str else None
    if isinstance(error, type) and issubclass(error, Exception):
        raise error(message)
    if isinstance(error, type) and issubclass(error, BaseException):
        raise SampleGone(f"the sample raised {name}")
    raise SampleError(f"{name}: {message}")


def request(op, target, *args, **kwargs):
    """Run `op` on the sample's object; its result decoded, its exception raised here."""
    rfd, wfd = Remote.link
    wire_args = [encode(a, _handle_of) for a in args]
    wire_kwargs = [[k, encode(v, _handle_of)] for k, v in kwargs.items()]
    try:
        _write_all(wfd, frame([op, target._tf_ref, wire_args, wire_kwargs]))
    except BrokenPipeError:
        raise SampleGone("the sample ended") from None
    reply = receive(rfd)
    if type(reply) is not list or not reply:
        raise SampleGone("the sample ended" if reply is None else "a malformed reply")
    if reply[0] == "raise" and len(reply) == 3:
        _raise_remote(reply[1], reply[2] if type(reply[2]) is str else "")
    if reply[0] != "ok" or len(reply) != 3 or type(reply[2]) is not list:
        raise SampleGone("a malformed reply")
    for key, wire in reply[2]:  # arguments the call changed in place
        if type(key) is int and 0 <= key < len(args):
            _update(args[key], decode(wire, Remote))
    return decode(reply[1], Remote)


def _update(original, new):
    if type(original) is not type(new):
        return
    if type(original) is list:
        original[:] = new
    else:
        original.clear()
        original.update(new)


def _manifest_value(wire):
    # A module the sample imported stands for the tests' own copy of it (if they have one).
    if type(wire) is list and len(wire) == 2 and wire[0] == "module" and type(wire[1]) is str:
        return sys.modules.get(wire[1])
    return decode(wire, Remote)


def run_tests(source, rfd, wfd):
    """Exit status of the tests against the sample's manifest: 0 only if they ran through."""
    Remote.link = (rfd, wfd)
    try:
        manifest = receive(rfd)
        if manifest is None:
            raise SampleGone("the sample ended before its top-level code finished")
        if type(manifest) is not list or len(manifest) != 2 or manifest[0] != "ready" or type(manifest[1]) is not list:
            raise SampleGone("a malformed manifest")
        module = new_main()
        for name, wire in manifest[1]:
            if type(name) is str and name.isidentifier() and not name.startswith("__"):
                setattr(module, name, _manifest_value(wire))
        sys.argv = ["tests.py"]
        exec(compile(source, "tests.py", "exec"), module.__dict__)
        return 0
    except SystemExit as e:  # unittest.main() ends this way
        return 0 if e.code in (None, 0, False) else 1
    except BaseException as e:
        traceback.print_exception(type(e), e, e.__traceback__)
        return 1
