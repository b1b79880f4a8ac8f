#!/usr/bin/env python3
"""Splits capture.sh's pcaps into one hex file per frame, named for what each frame is.

    extract.py DIR      (reads DIR/pcap, writes DIR/frames)

A frame's name comes from the phase capture.sh was in when it went out (phases-*.txt)
and from what it is: `PHASE.station-req.hex` (the station's ECP request; a repeated
seqno is `station-req-retransmit`), `.bridge-ack`, `.bridge-reply` (the bridge's VDP
answer, an ECP request of its own, ACK bit set; `-retransmit` likewise),
`.bridge-unsolicited-deassoc` (a De-Associate without the ACK bit), `.station-ack`; a
repeat in one phase gets `-2`, `-3`,
... (keep-alives); LLDP frames are `lldp-{bridge,station}-{lldpad,fake}-N.hex`, only
where one differs from the last of its sender. Prints an index (also DIR/frames/index.txt).
"""
import struct
import sys
from pathlib import Path

STATION = bytes.fromhex("020000000001")
BRIDGE = bytes.fromhex("020000000002")


def read_pcap(path):
    data = Path(path).read_bytes()
    magic = struct.unpack_from("<I", data)[0]
    nano = magic == 0xA1B23C4D
    assert magic in (0xA1B2C3D4, 0xA1B23C4D), "little-endian pcap expected"
    off = 24
    while off < len(data):
        sec, frac, incl, _orig = struct.unpack_from("<IIII", data, off)
        off += 16
        yield sec + frac / (1e9 if nano else 1e6), data[off : off + incl]
        off += incl


def read_phases(path):
    phases = []
    for line in Path(path).read_text().splitlines():
        ts, name = line.split(maxsplit=1)
        phases.append((float(ts), name))
    return phases


def phase_at(phases, ts):
    name = None
    for start, n in phases:
        if start <= ts:
            name = n
    return name


def kind(frame):
    src = frame[6:12]
    who = {STATION: "station", BRIDGE: "bridge"}.get(src, src.hex())
    etype = struct.unpack_from("!H", frame, 12)[0]
    if etype == 0x88CC:
        return who, "lldp", None
    hdr, seq = struct.unpack_from("!HH", frame, 14)
    op = "ack" if (hdr >> 10) & 3 else "req"
    return who, op, seq


def unsolicited(frame):
    """A bridge's VSI TLV without the ACK bit: a De-Associate of its own."""
    p = frame[18:]
    mgr_len = struct.unpack_from("!H", p, 0)[0] & 0x1FF
    return not p[2 + mgr_len + 2] & 0x40


def summary(frame):
    who, op, seq = kind(frame)
    if op == "lldp":
        body = frame[14:]
        off = 0
        ttl = evb = None
        while off + 2 <= len(body):
            h = struct.unpack_from("!H", body, off)[0]
            t, ln = h >> 9, h & 0x1FF
            if t == 0:
                break
            v = body[off + 2 : off + 2 + ln]
            if t == 3:
                ttl = struct.unpack("!H", v)[0]
            if t == 127 and v[:4] == bytes.fromhex("0080c20d"):
                evb = v[4:].hex()
            off += 2 + ln
        return f"LLDP ttl {ttl} evb {evb}"
    if op == "ack":
        return f"ECP ACK seq {seq}"
    p = frame[18:]
    parts = []
    off = 0
    while off + 2 <= len(p):
        h = struct.unpack_from("!H", p, off)[0]
        t, ln = h >> 9, h & 0x1FF
        if t == 0:
            break
        v = p[off + 2 : off + 2 + ln]
        if t == 5:
            parts.append(f"mgrid {v.rstrip(bytes(1)).decode(errors='replace')}")
        elif t in (1, 2, 3, 4):
            mode = {1: "preassoc", 2: "preassoc-rr", 3: "assoc", 4: "deassoc"}[t]
            fif = v[22]
            count = struct.unpack_from("!H", v, 23)[0]
            e = v[25:]
            filt = []
            size = {1: 2, 2: 8, 3: 6, 4: 12}.get(fif, 0)
            for i in range(count):
                x = e[i * size : (i + 1) * size]
                vid = struct.unpack("!H", x[-2:])[0]
                f = f"vid {vid & 0xFFF}" + (f" pcp/ps {vid >> 12:#x}" if vid >> 12 else "")
                if fif in (3, 4):
                    f = f"gid {struct.unpack('!I', x[:4])[0]} " + f
                if fif in (2, 4):
                    f = f"mac {x[-8:-2].hex(':')} " + f
                filt.append(f)
            parts.append(f"{mode} status {v[0]:#04x} fif {fif} [{', '.join(filt)}]")
        off += 2 + ln
    return f"ECP REQ seq {seq}: " + "; ".join(parts)


def hexlines(frame):
    return "".join(frame[i : i + 16].hex(" ") + "\n" for i in range(0, len(frame), 16))


def main():
    cap, out = Path(sys.argv[1]) / "pcap", Path(sys.argv[1]) / "frames"
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for part in ("lldpad", "fake"):
        phases = read_phases(cap / f"phases-{part}.txt")
        t0 = phases[0][0]
        seen = {}
        last_lldp = {}
        last_req_seq = {}
        for ts, frame in read_pcap(cap / f"{part}.pcap"):
            ph = phase_at(phases, ts)
            who, op, _seq = kind(frame)
            if op == "lldp":
                # Every LLDP frame of a run is alike but the first of each side (the
                # neighbour's status not yet echoed) and a shutdown (TTL 0).
                s = summary(frame)
                if last_lldp.get(who) == s:
                    continue
                last_lldp[who] = s
                n = seen.get((part, who, "lldp"), 0) + 1
                seen[(part, who, "lldp")] = n
                name = f"lldp-{who}-{part}-{n}"
            else:
                if ph is None or ph in ("start", "end"):
                    ph = "unexpected"
                if op == "req":
                    again = last_req_seq.get(who) == _seq
                    last_req_seq[who] = _seq
                    if who == "bridge":
                        op = "unsolicited-deassoc" if unsolicited(frame) else "reply"
                    if again:
                        op += "-retransmit"
                key = (part, ph, who, op)
                n = seen.get(key, 0) + 1
                seen[key] = n
                name = f"{ph}.{who}-{op}" + (f"-{n}" if n > 1 else "")
            (out / f"{name}.hex").write_text(hexlines(frame))
            index.append(f"{ts - t0:9.6f} {part:6} {name + '.hex':52} {len(frame):4}  {summary(frame)}")
    (out / "index.txt").write_text("\n".join(index) + "\n")
    print("\n".join(index))


if __name__ == "__main__":
    main()
