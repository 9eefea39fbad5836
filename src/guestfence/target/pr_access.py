"""Which commands a persistent reservation lets through (SPC-4 5.13.1 table 66, SBC-3 4.17).

Each command falls in one access class, from the columns of the SPC-4 and
SBC-3 tables "commands in the presence of persistent reservations":

* ``ALLOWED``: allowed under every type from every I_T nexus (INQUIRY, REPORT
  LUNS, REQUEST SENSE, TEST UNIT READY, PR IN/OUT, READ CAPACITY, LOG SENSE,
  REPORT TARGET PORT GROUPS, ...);
* ``READ``: allowed under the Write Exclusive types, RESERVATION CONFLICT under
  the Exclusive Access types (READ, VERIFY, PRE-FETCH, GET LBA STATUS);
* ``WE_ALLOWED``: the commands footnoted with ALLOW COMMANDS: we report
  ALLOW COMMANDS = 011b, so they pass Write Exclusive types and conflict under
  Exclusive Access (MODE SENSE, READ BUFFER, READ ATTRIBUTE, RECEIVE
  DIAGNOSTIC RESULTS, READ DEFECT DATA, REPORT SUPPORTED OPERATION CODES,
  REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS);
* ``CONFLICT``: every other command, writes included (WRITE, WRITE SAME,
  WRITE AND VERIFY, COMPARE AND WRITE, UNMAP, SYNCHRONIZE CACHE, FORMAT UNIT,
  MODE SELECT, ...); an unknown operation code is treated so too;
* ``SPC2``: RESERVE(6/10) and RELEASE(6/10). We report CRH=0, so (SPC-4
  5.13.3, as SPC-3 5.6.3) they get RESERVATION CONFLICT while any I_T nexus is
  registered, whether or not a reservation exists.

The classes apply to an I_T nexus that is *not privileged*: for Write
Exclusive and Exclusive Access (1h, 3h) every nexus but the holder; for the
registrants-only and all-registrants types (5h-8h) every unregistered nexus.
A privileged nexus may run anything.
"""

from __future__ import annotations

import enum

from guestfence.scsi import pr
from guestfence.scsi.sense import Sense, SenseKey
from guestfence.target.lun import Nexus

ALLOW_COMMANDS = 0b011  # REPORT CAPABILITIES byte 3 bits 6-4; see WE_ALLOWED


class Access(enum.Enum):
    ALLOWED = "allowed"
    READ = "read"
    WE_ALLOWED = "allowed under write exclusive"
    CONFLICT = "conflict"
    SPC2 = "SPC-2 reserve/release"


_ALLOWED = frozenset({
    0x00,  # TEST UNIT READY (SPC-4: allowed; ALLOW COMMANDS >= 001b)
    0x03,  # REQUEST SENSE
    0x12,  # INQUIRY
    0x25,  # READ CAPACITY(10)
    0x4D,  # LOG SENSE
    0x5E,  # PERSISTENT RESERVE IN
    0x5F,  # PERSISTENT RESERVE OUT (its own rules are in Reservations.pr_out)
    0x86,  # ACCESS CONTROL IN
    0x87,  # ACCESS CONTROL OUT
    0xA0,  # REPORT LUNS
})
_READ = frozenset({
    0x08, 0x28, 0xA8, 0x88,  # READ(6/10/12/16)
    0x2F, 0xAF, 0x8F,  # VERIFY(10/12/16)
    0x34, 0x90,  # PRE-FETCH(10/16)
})
_WE_ALLOWED = frozenset({
    0x1A, 0x5A,  # MODE SENSE(6/10)
    0x1C,  # RECEIVE DIAGNOSTIC RESULTS
    0x3C, 0x9B,  # READ BUFFER(10/16)
    0x8C,  # READ ATTRIBUTE
    0x37, 0xB7,  # READ DEFECT DATA(10/12)
})
_SPC2 = frozenset({0x16, 0x17, 0x56, 0x57})  # RESERVE(6) RELEASE(6) RESERVE(10) RELEASE(10)

# SERVICE ACTION IN(16) 9Eh: READ CAPACITY(16) 10h, GET LBA STATUS 12h.
_SAI16 = {0x10: Access.ALLOWED, 0x12: Access.READ}
# MAINTENANCE IN A3h: REPORT IDENTIFYING INFORMATION 05h, REPORT TARGET PORT
# GROUPS 0Ah, REPORT ALIASES 0Bh, REPORT SUPPORTED OPERATION CODES 0Ch, REPORT
# SUPPORTED TASK MANAGEMENT FUNCTIONS 0Dh, REPORT PRIORITY 0Eh, REPORT
# TIMESTAMP 0Fh, MANAGEMENT PROTOCOL IN 10h.
_MAINTENANCE_IN = {0x05: Access.ALLOWED, 0x0A: Access.ALLOWED, 0x0B: Access.ALLOWED,
                   0x0C: Access.WE_ALLOWED, 0x0D: Access.WE_ALLOWED, 0x0E: Access.ALLOWED,
                   0x0F: Access.ALLOWED, 0x10: Access.ALLOWED}
# VARIABLE LENGTH 7Fh, SERVICE ACTION in bytes 8-9: READ(32) 0009h, VERIFY(32) 000Ah.
_VARIABLE = {0x0009: Access.READ, 0x000A: Access.READ}


def classify(cdb: bytes) -> Access:
    """The access class of a CDB (CONFLICT for anything unknown or cut short)."""
    if not cdb:
        return Access.CONFLICT
    op = cdb[0]
    if op in _ALLOWED:
        return Access.ALLOWED
    if op in _READ:
        return Access.READ
    if op in _WE_ALLOWED:
        return Access.WE_ALLOWED
    if op in _SPC2:
        return Access.SPC2
    if op == 0x9E and len(cdb) > 1:
        return _SAI16.get(cdb[1] & 0x1F, Access.CONFLICT)
    if op == 0xA3 and len(cdb) > 1:
        return _MAINTENANCE_IN.get(cdb[1] & 0x1F, Access.CONFLICT)
    if op == 0xAB and len(cdb) > 1 and cdb[1] & 0x1F == 0x01:
        return Access.ALLOWED  # READ MEDIA SERIAL NUMBER
    if op == 0x7F and len(cdb) > 9:
        return _VARIABLE.get(int.from_bytes(cdb[8:10], "big"), Access.CONFLICT)
    if op == 0x1B and len(cdb) > 4:
        # START STOP UNIT: START=1 with POWER CONDITION 0h is allowed, all else conflicts.
        return Access.ALLOWED if cdb[4] & 0x01 and cdb[4] >> 4 == 0 else Access.CONFLICT
    if op == 0x1E and len(cdb) > 4:
        # PREVENT ALLOW MEDIUM REMOVAL: PREVENT=00b is allowed, all else conflicts.
        return Access.ALLOWED if cdb[4] & 0x03 == 0 else Access.CONFLICT
    return Access.CONFLICT


def write_exclusive(type: int) -> bool:
    """Types 1h, 5h and 7h restrict writes only; 3h, 6h and 8h restrict reads too."""
    return type in (0x1, 0x5, 0x7)


def allowed(cdb: bytes, *, type: int | None, privileged: bool, any_registered: bool) -> bool:
    """May this command run (else RESERVATION CONFLICT)?

    ``type``: the reservation type, None when there is no reservation.
    ``privileged``: the nexus is the holder (1h, 3h) or registered (5h-8h).
    ``any_registered``: some I_T nexus is registered (for RESERVE/RELEASE(6/10)).
    """
    access = classify(cdb)
    if access is Access.SPC2:
        return not any_registered
    if type is None or privileged or access is Access.ALLOWED:
        return True
    if access in (Access.READ, Access.WE_ALLOWED):
        return write_exclusive(type)
    return False


# --- helpers of target/pr.py ---------------------------------------------------


def illegal_request_sense(asc: int, ascq: int = 0, *, cdb: tuple[int, int] | None = None,
                          param: tuple[int, int] | None = None) -> bytes:
    """Fixed-format ILLEGAL REQUEST sense, with a field pointer (byte, bit) into the CDB
    or the parameter list when given (SENSE KEY SPECIFIC: SKSV, C/D, BPV, BIT POINTER)."""
    sks = None
    where = cdb if cdb is not None else param
    if where is not None:
        byte, bit = where
        flags = 0x80 | (0x40 if cdb is not None else 0) | 0x08 | bit
        sks = bytes([flags]) + byte.to_bytes(2, "big")
    return Sense(SenseKey.ILLEGAL_REQUEST, asc, ascq, sense_key_specific=sks).encode()


def parse_iscsi_transport_id(tid: bytes, port: int) -> Nexus | None:
    """An iSCSI TransportID of format 01b (name ',i,0x' ISID) as a Nexus, else None."""
    if len(tid) < 4 or tid[0] != (0x40 | pr.ISCSI_PROTOCOL):
        return None
    length = int.from_bytes(tid[2:4], "big")
    if length > len(tid) - 4:
        return None
    text = tid[4:4 + length].split(b"\0", 1)[0].decode("utf-8", "replace")
    name, sep, isid = text.rpartition(",i,0x")
    if not sep or not name or len(isid) != 12:
        return None
    try:
        return Nexus(name.lower(), bytes.fromhex(isid), port)
    except ValueError:
        return None
