"""send_and_expect and send_and_assert_no_reply: send from one endpoint,
capture at another, match by marker, report what was sent and what arrived."""
from .frames import DEFAULT_TIMEOUT, MARKER_RE, NO_REPLY_TIMEOUT, PodnetTestError, _packets, _report, mark


class _Matcher:
    """Which captured frames carry which sent packet's marker, kept up to
    date as frames arrive (each frame's bytes scanned once)."""

    def __init__(self, marks):
        self.wanted = set(marks)
        self.by = {}                   # marker -> indices of the frames carrying it
        self.others = []               # indices of frames carrying none of them
        self.seen = 0

    def update(self, raw):
        for k in range(self.seen, len(raw)):
            hit = [m for m in MARKER_RE.findall(raw[k]) if m in self.wanted]
            if hit:
                self.by.setdefault(hit[0], []).append(k)
            else:
                self.others.append(k)
        self.seen = len(raw)
        return self

    def frames_by(self, frames):
        return {m: [frames[k] for k in ks] for m, ks in self.by.items()}

    def marked(self):
        return sorted(k for ks in self.by.values() for k in ks)


def _send_capturing(src, pkts, dst, done, timeout, filter):
    pkts = _packets(pkts)
    if not pkts:
        raise PodnetTestError("no packets to send")
    sent, marks = zip(*(mark(p) for p in pkts))
    frames = src.check_frames(sent)                   # before the capture: nothing sent if one is too long
    match = _Matcher(marks)
    with dst.capture(filter) as cap:
        src._transmit(frames)
        got = cap.wait(lambda raw: done(match.update(raw)), timeout)
    match.update(cap.raw)
    return list(sent), list(marks), got, match


def send_and_expect(src, pkts, dst, count=None, timeout=DEFAULT_TIMEOUT, filter=None):
    """Send pkts from src (a Pod, an uplink, a MemoryPod or MemoryPort) and
    expect them at dst: returns the frames (scapy) that arrived carrying the
    sent packets' markers (a packet without one gets one: see mark()).

    count None: every packet must arrive exactly once, and the frames are
    returned in the order the packets were sent. count n: n marked frames
    must arrive (one packet may arrive several times, some not at all), in
    arrival order. Waits up to timeout s, returning as soon as that many
    are in. filter (BPF text or a callable) narrows what dst captures.
    Fails with an AssertionError listing each packet sent, what it arrived
    as (with the fields that changed) or that it did not, and what else
    arrived."""
    n = len(_packets(pkts))
    if count is None:
        done = lambda m: len(m.by) == n                        # noqa: E731
    else:
        done = lambda m: sum(map(len, m.by.values())) >= count  # noqa: E731
    sent, marks, frames, match = _send_capturing(src, pkts, dst, done, timeout, filter)
    by = match.frames_by(frames)
    others = [frames[k] for k in match.others]
    title = f"send_and_expect {_name(src)} -> {_name(dst)}: "
    if count is None:
        missing = [m for m in marks if m not in by]
        twice = [m for m in marks if len(by.get(m, ())) > 1]
        if missing or twice:
            what = []
            if missing:
                what.append(f"{len(missing)} of {len(sent)} packets did not arrive within {timeout} s")
            if twice:
                what.append(f"{len(twice)} arrived more than once")
            raise AssertionError(_report(title + "; ".join(what), sent, marks, frames, by, others))
        return [by[m][0] for m in marks]
    got = [frames[k] for k in match.marked()]
    if len(got) != count:
        raise AssertionError(_report(title + f"expected {count} marked frames, {len(got)} arrived within {timeout} s",
                                     sent, marks, frames, by, others))
    return got


def send_and_assert_no_reply(src, pkts, dst, timeout=NO_REPLY_TIMEOUT, filter=None):
    """Send pkts from src and assert that nothing carrying their markers
    arrives at dst within timeout s (a drop, a filter, an ACL). Fails with
    the same report as send_and_expect, listing what did arrive."""
    sent, marks, frames, match = _send_capturing(src, pkts, dst, lambda m: bool(m.by), timeout, filter)
    if match.by:
        raise AssertionError(_report(f"send_and_assert_no_reply {_name(src)} -> {_name(dst)}: "
                                     f"{len(match.by)} of {len(sent)} packets arrived", sent, marks, frames,
                                     match.frames_by(frames), [frames[k] for k in match.others]))


def _name(ep):
    return getattr(ep, "name", repr(ep))
