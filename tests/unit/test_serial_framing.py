"""Serial listener pieces without sockets: request framing, answer framing, socket discovery."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from guestfence.host.libvirt_events import RunningDomain
from guestfence.host.listeners.serial import SERIAL_FRAMING, RequestFramer
from guestfence.virt.wire import HOST_LIST_END, HostRecord, Op, SerialRequest

REQ1 = SerialRequest(op=Op.STATUS, domain="guest1", seqno=1)
REQ2 = SerialRequest(op=Op.OFF, domain="abba-db", seqno=0x61626261)


def test_requests_split_anywhere_are_reassembled() -> None:
    data = REQ1.pack() + REQ2.pack()
    for cut in range(len(data) + 1):
        framer = RequestFramer()
        assert framer.feed(data[:cut]) + framer.feed(data[cut:]) == [REQ1, REQ2]
        assert framer.skipped == 0


def test_garbage_before_and_between_requests_is_skipped() -> None:
    framer = RequestFramer()
    garbage = b"\x00login: ab" + b"abba\x01\x00\xff" * 30  # a magic that starts no request
    assert framer.feed(garbage + REQ1.pack() + b"ab" + REQ2.pack()) == [REQ1, REQ2]
    assert framer.skipped == len(garbage) + 2
    assert not framer.buffer


def test_a_fragment_followed_by_a_new_request_is_dropped() -> None:
    framer = RequestFramer()
    assert framer.feed(b"abba\x04\x00gue") == []
    assert framer.partial
    assert framer.feed(REQ1.pack()) == [REQ1]
    assert not framer.buffer


def test_a_partial_request_can_be_given_up() -> None:
    framer = RequestFramer()
    assert framer.feed(b"abba\x04\x00guest1") == []
    assert framer.drop_partial() == []
    assert not framer.partial
    assert framer.feed(REQ2.pack()) == [REQ2]


def test_a_possible_magic_at_the_end_is_kept() -> None:
    framer = RequestFramer()
    packed = REQ1.pack()
    assert framer.feed(b"xyz" + packed[:3]) == []
    assert bytes(framer.buffer) == packed[:3]
    assert framer.feed(packed[3:]) == [REQ1]


@given(st.binary(max_size=300).map(lambda b: b.replace(b"x", b"abba")),
       st.sampled_from([REQ1, REQ2]))
def test_a_request_after_any_garbage_is_found(garbage: bytes, req: SerialRequest) -> None:
    """Once a pending fragment is given up (after 1 s), the next request is always found."""
    framer = RequestFramer()
    framer.feed(garbage)
    while framer.partial:
        framer.drop_partial()
    assert len(framer.buffer) < 4
    assert framer.feed(req.pack()) == [req]
    assert not framer.buffer


def test_overlapping_magics() -> None:
    framer = RequestFramer()
    assert framer.feed(b"abb" + REQ1.pack()) == [REQ1]  # "abbabba...": the real one is second
    assert framer.skipped == 3


def test_answers_and_host_lists() -> None:
    assert SERIAL_FRAMING.result(2) == b"abba\x02"
    records = [HostRecord("guest1", "5e7a0001-0000-4000-8000-000000000001", 1)]
    assert SERIAL_FRAMING.host_list(records) == (
        b"abba\xfd" + records[0].pack() + HOST_LIST_END + b"abba\x00")
    assert SERIAL_FRAMING.host_list([]) == b"abba\xfd" + bytes(130) + b"abba\x00"


XML = """<domain type='kvm'><name>g</name><devices>
  <serial type='unix'><source mode='bind' path='/run/fence/g.sock'/><target port='0'/></serial>
  <serial type='unix'><source mode='connect' path='/run/fence/other.sock'/></serial>
  <serial type='pty'><source path='/dev/pts/3'/></serial>
  <serial type='unix'><source mode='bind' path='/run/fence/sub/deeper.sock'/></serial>
  <console type='unix'><source mode='bind' path='/run/fence/g.sock'/></console>
  <channel type='unix'><source mode='bind' path='/var/lib/libvirt/qemu/ga.sock'/>
    <target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  <channel type='unix'><source mode='bind' path='/run/fence//vmc.sock'/></channel>
</devices></domain>"""


def test_serial_and_channel_sockets_are_found() -> None:
    dom = RunningDomain("g", "5e7a0001-0000-4000-8000-000000000001", XML)
    assert dom.unix_sockets("serial") == ["/run/fence/g.sock", "/run/fence/sub/deeper.sock"]
    assert dom.unix_sockets("channel") == [
        "/var/lib/libvirt/qemu/ga.sock", "/run/fence//vmc.sock"]


def test_the_path_filter_takes_sockets_directly_in_the_directory() -> None:
    dom = RunningDomain("g", "5e7a0001-0000-4000-8000-000000000001", XML)
    assert dom.unix_sockets("serial", "/run/fence/") == ["/run/fence/g.sock"]
    assert dom.unix_sockets("channel", "/run/fence") == ["/run/fence//vmc.sock"]
    assert dom.unix_sockets("serial", "/run") == []
