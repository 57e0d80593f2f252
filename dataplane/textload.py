"""Loading untrusted JSON and YAML (specs, manifests, control requests)
strictly: a key given twice is an error, not a silent "last one wins" (as
kubectl's YAML-to-JSON conversion rejects it), and what the parsers raise
besides their own errors (nesting deeper than the interpreter's stack, a
number longer than Python converts) becomes one readable reason."""
import json
import re
import sys

import yaml
from yaml.constructor import ConstructorError

_MERGE = "tag:yaml.org,2002:merge"


def _check_duplicates(loader, node):
    seen = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE:
            continue                     # `<<:` merges may override; complex keys are rare
        key = (key_node.tag, key_node.value)
        if key in seen:
            raise ConstructorError("while constructing a mapping", node.start_mark,
                                   f"found duplicate key {key_node.value!r}", key_node.start_mark)
        seen[key] = key_node


def _strict(base):
    class Loader(base):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                _check_duplicates(self, node)
            return super().construct_mapping(node, deep)
    Loader.__name__ = f"Strict{base.__name__}"
    return Loader


StrictSafeLoader = _strict(yaml.SafeLoader)
# libyaml's loader when present: the pure-Python one takes seconds on 10k objects
FastStrictSafeLoader = _strict(getattr(yaml, "CSafeLoader", yaml.SafeLoader))


_EventLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_DEPTH = 1000                 # no spec or manifest nests a tenth of this
_RUN = re.compile(r"(?:[-?][ \t]+){2,}")          # "- - - x": block nesting on one line


def check_depth(text):
    """Raise ValueError if text nests more than MAX_DEPTH levels. libyaml's
    composer recurses in C, so a few hundred kilobytes of "[" would overflow
    the C stack (a segfault, not a RecursionError). Nesting costs at least a
    character per level only in flow style or "- - -" runs; indented block
    nesting grows quadratically and stays shallow in any file read_text
    accepts. So the events are counted only when those could go deep."""
    runs = max((len(m) for m in _RUN.findall(text)), default=0)
    if text.count("[") + text.count("{") + runs <= MAX_DEPTH:
        return
    depth = 0
    for ev in yaml.parse(text, Loader=_EventLoader):   # events: no recursion, and in C
        c = ev.__class__
        if c is yaml.MappingStartEvent or c is yaml.SequenceStartEvent:
            depth += 1
            if depth > MAX_DEPTH:
                raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
        elif c is yaml.MappingEndEvent or c is yaml.SequenceEndEvent:
            depth -= 1


def problem(exc):
    """What went wrong, in words, for an exception from loading (not a YAMLError)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    msg = str(exc)
    if "integer string conversion" in msg:
        return f"a number with more than {sys.get_int_max_str_digits()} digits"
    return msg


def _pairs(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise ValueError(f"duplicate key {k!r}")
        obj[k] = v
    return obj


def json_loads(text):
    """json.loads rejecting duplicate keys; raises ValueError with a readable
    message for anything that cannot be read."""
    try:
        return json.loads(text, object_pairs_hook=_pairs)
    except RecursionError as e:
        raise ValueError(problem(e)) from None
    except ValueError as e:
        raise ValueError(problem(e)) from None
