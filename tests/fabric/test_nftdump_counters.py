"""fabric.nftdump's counter objects: the kernel's layout read by slicing, anything else
attribute by attribute, both giving the same (the namespace test checks the kernel's own)."""

from __future__ import annotations

import struct

from fabric import nftdump
from fabric.nftdump import (
    COUNTER_BYTES,
    COUNTER_PACKETS,
    NFT_OBJECT_COUNTER,
    OBJ_DATA,
    OBJ_NAME,
    OBJ_TABLE,
    OBJ_TYPE,
)

KIND = struct.pack(">I", NFT_OBJECT_COUNTER)
OBJ_HANDLE, OBJ_USE, OBJ_USERDATA = 6, 5, 8


def message(table: str, name: str, packets: int, nbytes: int, *, kind: bytes = KIND, tail: bytes = b"") -> bytes:
    """One object as nf_tables_fill_obj_info lays it out: table, name, type, handle, use, data."""
    a = nftdump._attr
    data = a(COUNTER_BYTES, nbytes.to_bytes(8, "big")) + a(COUNTER_PACKETS, packets.to_bytes(8, "big"))
    return (a(OBJ_TABLE, table.encode() + b"\0") + a(OBJ_NAME, name.encode() + b"\0") + a(OBJ_TYPE, kind)
            + a(OBJ_HANDLE, (7).to_bytes(8, "big")) + a(OBJ_USE, (1).to_bytes(4, "big"))
            + a(OBJ_DATA, data) + tail)


def read(data: bytes, table: str = "crosswire-exports") -> tuple[tuple[str, int, int] | None, ...]:
    head = nftdump._attr(OBJ_TABLE, table.encode() + b"\0")
    return nftdump._counter_as_laid_out(data, head), nftdump._counter_object(data, table)


def test_the_kernels_layout_is_read_by_slicing_as_by_attributes() -> None:
    for name, packets, nbytes in [("denied-lab", 0, 0), ("denied-a", 3, 180), ("denied-" + "x" * 57, 2**40, 2**63)]:
        fast, walked = read(message("crosswire-exports", name, packets, nbytes))
        assert fast == walked == (name, packets, nbytes)


def test_another_layout_is_read_by_attributes() -> None:
    # a comment (userdata) after the data: not the layout the slices expect
    data = message("crosswire-exports", "denied-lab", 5, 300, tail=nftdump._attr(OBJ_USERDATA, b"note\0"))
    fast, walked = read(data)
    assert fast is None and walked == ("denied-lab", 5, 300)


def test_another_tables_or_types_object_is_not_read() -> None:
    assert read(message("someone-else", "denied-lab", 5, 300)) == (None, None)
    assert read(message("crosswire-exports-2", "denied-lab", 5, 300)) == (None, None)
    quota = message("crosswire-exports", "denied-lab", 5, 300, kind=struct.pack(">I", 2))
    assert read(quota) == (None, None)
