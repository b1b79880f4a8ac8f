#!/usr/bin/env python3
"""A scripted VDP bridge for provoking answers lldpad's own bridge role never gives.

Runs in the bridge namespace on one end of the veth (no lldpad there): sends an LLDP
frame with an EVB TLV every second, ACKs every ECP request, and answers each VDP
request with the same TLVs, status 0x40 | ERR, and, where the station asked for VID 0,
the VID given with --vid. Stops after --seconds.

    fake_bridge.py IFACE [--vid N] [--err N] [--err-on assoc|all] [--rte N] [--rwd N]
                   [--rka N] [--retries N] [--deassoc-after S] [--seconds S] [--seq N]

--deassoc-after S: S seconds after the first successful associate, an unsolicited
De-Associate of that VSI (status 0, no ACK bit), as a bridge that withdraws a VSI sends.
"""
import argparse
import random
import select
import socket
import struct
import time

ETH_P_ALL = 0x0003
ECP = 0x8940
LLDP = 0x88CC
GROUP = bytes.fromhex("0180c2000000")
PACKET_OUTGOING = 4


def lldp_frame(mac, rte, rwd, rka, retries):
    def tlv(t, v):
        return struct.pack("!H", t << 9 | len(v)) + v

    evb = bytes.fromhex("0080c20d") + bytes(
        [0x06, 0x00, retries << 5 | rte, 0x40 | rwd, rka]
    )
    body = (
        tlv(1, b"\x04" + mac)
        + tlv(2, b"\x03" + mac)
        + tlv(3, struct.pack("!H", 120))
        + tlv(127, evb)
        + tlv(0, b"")
    )
    frame = GROUP + mac + struct.pack("!H", LLDP) + body
    return frame.ljust(60, b"\0")


def reply_tlvs(payload, vid, err, err_on):
    """The bridge's answer to a station's VDP payload (Manager ID TLV + VSI TLVs)."""
    out = bytearray(payload)
    off = 0
    while off + 2 <= len(out):
        hdr = struct.unpack_from("!H", out, off)[0]
        t, ln = hdr >> 9, hdr & 0x1FF
        if t == 0:
            break
        if t in (1, 2, 3, 4):
            v = off + 2
            status = 0x40
            if err and (err_on == "all" or t in (1, 2, 3)):
                status |= err
            out[v] = status
            fif = out[v + 22]
            count = struct.unpack_from("!H", out, v + 23)[0]
            size = {1: 2, 2: 8, 3: 6, 4: 12}[fif]
            e = v + 25
            for _ in range(count):
                vpos = e + size - 2
                cur = struct.unpack_from("!H", out, vpos)[0]
                if vid and cur & 0x0FFF == 0 and t != 4:
                    struct.pack_into("!H", out, vpos, (cur & 0xF000) | vid)
                e += size
        off += 2 + ln
    return bytes(out)


def vsi_type(payload):
    """The TLV type of the first VSI TLV (after the Manager ID TLV)."""
    mgr_len = struct.unpack_from("!H", payload, 0)[0] & 0x1FF
    return struct.unpack_from("!H", payload, 2 + mgr_len)[0] >> 9


def deassoc_of(payload):
    """The payload with its VSI TLV turned into a De-Associate with status 0."""
    out = bytearray(payload)
    off = 2 + (struct.unpack_from("!H", out, 0)[0] & 0x1FF)
    hdr = struct.unpack_from("!H", out, off)[0]
    struct.pack_into("!H", out, off, 4 << 9 | hdr & 0x1FF)
    out[off + 2] = 0
    return bytes(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("iface")
    ap.add_argument("--vid", type=int, default=0)
    ap.add_argument("--err", type=int, default=0)
    ap.add_argument("--err-on", choices=["assoc", "all"], default="assoc")
    ap.add_argument("--rte", type=int, default=8)
    ap.add_argument("--rwd", type=int, default=16)
    ap.add_argument("--rka", type=int, default=16)
    ap.add_argument("--retries", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--deassoc-after", type=float, default=None)
    ap.add_argument("--seq", type=int, default=None, help="first ECP seqno - 1 (default: random)")
    a = ap.parse_args()

    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((a.iface, 0))
    mac = s.getsockname()[4]
    lldp = lldp_frame(mac, a.rte, a.rwd, a.rka, a.retries)
    # A new instance must not reuse the last seqno the station heard: ECP drops a
    # repeated one as a duplicate.
    seq = random.randrange(1, 0xFFFF) if a.seq is None else a.seq
    end = time.monotonic() + a.seconds
    next_lldp = 0.0
    withdraw = None  # (when, payload) of the unsolicited De-Associate still to send
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_lldp:
            s.send(lldp)
            next_lldp = now + 1.0
        if withdraw and now >= withdraw[0]:
            seq = seq % 0xFFFF + 1
            frame = GROUP + mac + struct.pack("!HHH", ECP, 0x1001, seq) + withdraw[1]
            s.send(frame.ljust(60, b"\0"))
            print(f"unsolicited deassoc with seq {seq}", flush=True)
            withdraw = None
        wake = min(next_lldp, end, withdraw[0] if withdraw else end)
        r, _, _ = select.select([s], [], [], max(0.0, wake - now))
        if not r:
            continue
        data, addr = s.recvfrom(2048)
        if addr[2] == PACKET_OUTGOING or len(data) < 18:
            continue
        if struct.unpack_from("!H", data, 12)[0] != ECP:
            continue
        hdr, sseq = struct.unpack_from("!HH", data, 14)
        op = (hdr >> 10) & 3
        if op != 0:
            continue
        s.send(GROUP + mac + struct.pack("!HHH", ECP, 0x1401, sseq))
        seq = seq % 0xFFFF + 1
        answer = reply_tlvs(data[18:], a.vid, a.err, a.err_on)
        frame = GROUP + mac + struct.pack("!HHH", ECP, 0x1001, seq) + answer
        s.send(frame.ljust(60, b"\0"))
        print(f"answered seq {sseq} with seq {seq}", flush=True)
        if a.deassoc_after is not None and not a.err and vsi_type(answer) == 3:
            when = time.monotonic() + a.deassoc_after
            withdraw = (when, deassoc_of(answer))
            a.deassoc_after = None


if __name__ == "__main__":
    main()
