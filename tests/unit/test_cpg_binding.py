"""The ctypes layer of libcpg: structure layouts as corosync 3.1.7's headers define them."""

from __future__ import annotations

import ctypes

import pytest

from guestfence.errors import BackendError
from guestfence.tracking import cpg


def test_structure_sizes_match_the_c_headers() -> None:
    # sizes and offsets measured with gcc on cpg.h / corotypes.h (lab notes, Q2)
    assert ctypes.sizeof(cpg.CpgName) == 132
    assert ctypes.sizeof(cpg.CpgAddress) == 12
    assert ctypes.sizeof(cpg.CpgRingId) == 16
    assert cpg.CpgRingId.seq.offset == 8  # 4 bytes of padding after nodeid
    assert ctypes.sizeof(cpg.IoVec) == 16
    assert ctypes.sizeof(cpg.CpgModelV1Data) == 40
    assert cpg.CpgModelV1Data.flags.offset == 32
    assert cpg.CpgName.value.offset == 4


def test_return_codes_and_constants() -> None:
    assert cpg.CS_OK == 1  # not 0
    assert cpg.CS_ERROR_NAMES[cpg.CS_ERR_LIBRARY] == "CS_ERR_LIBRARY"
    assert cpg.CS_ERROR_NAMES[cpg.CS_ERR_TRY_AGAIN] == "CS_ERR_TRY_AGAIN"
    assert cpg.CS_ERROR_NAMES[cpg.CS_ERR_NOT_EXIST] == "CS_ERR_NOT_EXIST"
    assert cpg.CPG_TYPE_AGREED == 2 and cpg.CS_DISPATCH_ALL == 2
    assert [cpg.REASON_NAMES[i] for i in range(6)] == [
        "UNDEFINED", "JOIN", "LEAVE", "NODEDOWN", "NODEUP", "PROCDOWN"]


def test_group_name_is_length_counted() -> None:
    name = cpg.group_name("guestfence")
    assert name.length == 10
    assert bytes(name.value[:10]) == b"guestfence"
    with pytest.raises(cpg.CpgError):
        cpg.group_name("x" * 129)
    with pytest.raises(cpg.CpgError):
        cpg.group_name("")


def test_connection_errors_say_what_to_check() -> None:
    err = cpg.CorosyncUnreachable(cpg.CS_ERR_NOT_EXIST)
    assert isinstance(err, BackendError) and err.code == cpg.CS_ERR_NOT_EXIST
    assert str(err) == ("cannot connect to corosync (CS_ERR_NOT_EXIST): is corosync running, "
                        "and is guestfenced in its network and mount namespace?")


def test_library_loads_with_typed_functions() -> None:
    lib = cpg.load_library()  # libcpg4 is a test package (Makefile)
    assert lib.cpg_mcast_joined.restype is cpg.cs_error_t
    assert lib.cpg_dispatch.argtypes == [cpg.cpg_handle_t, ctypes.c_int]


def test_addresses_convert_reasons() -> None:
    array = (cpg.CpgAddress * 2)((1, 100, 3), (2, 200, 99))
    got = cpg._addresses(ctypes.cast(array, ctypes.POINTER(cpg.CpgAddress)), 2)
    assert got == [cpg.Address(1, 100, "NODEDOWN"), cpg.Address(2, 200, "99")]


def test_callbacks_never_raise_into_c() -> None:
    def boom(*_args: object) -> None:
        raise RuntimeError("bug in a handler")

    handle = cpg.CpgHandle("g", boom, boom)
    payload = ctypes.create_string_buffer(b"abc", 3)
    handle._deliver(0, None, 1, 2, ctypes.addressof(payload), 3)  # logs, does not raise
    array = (cpg.CpgAddress * 1)((1, 2, 1))
    ptr = ctypes.cast(array, ctypes.POINTER(cpg.CpgAddress))
    handle._confchg(0, None, ptr, 1, ptr, 0, ptr, 1)
