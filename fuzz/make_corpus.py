#!/usr/bin/env python3
"""Regenerates the checked-in seed corpus under fuzz/corpus/<target>/.

Sources: the UDP payloads of the kernel VXLAN captures in tests/vectors/*.pcap (decap_vxlan),
their inner IP packets (decap_udp: flannel's udp backend carries exactly those) and inner ARP
frames (arp_reply), plus hand-made GRE packets, IPv4+GRE packets, flannel JSON configs and
leases, subnet keys and TSO seeds. Files are named by the SHA-1 of their content, as
libFuzzer names them. Stdlib only; run from anywhere: python3 fuzz/make_corpus.py
"""
import hashlib
import pathlib
import struct

FUZZ = pathlib.Path(__file__).resolve().parent
VECTORS = FUZZ.parent / "tests" / "vectors"
CORPUS = FUZZ / "corpus"
MAX_SEED = 1600  # bytes: skip the 47 KB GSO super-frames of the flannel capture
MAX_PER_TARGET = 40


def pcap_udp_payloads(path):
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    off = 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 15) * 4
        total = struct.unpack(">H", ip[2:4])[0]
        if ip[9] != 17:
            continue
        udp = ip[ihl:total]
        yield udp[8:]


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(">%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4(src, dst, proto, payload, ident=0):
    h = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, 64,
                              proto, 0, bytes(src), bytes(dst)))
    h[10:12] = struct.pack(">H", csum(bytes(h)))
    return bytes(h) + payload


def icmp_echo(n):
    body = bytes((i * 7) & 0xFF for i in range(n))
    m = bytearray(struct.pack(">BBHHH", 8, 0, 0, 0x1234, 1) + body)
    m[2:4] = struct.pack(">H", csum(bytes(m)))
    return bytes(m)


def gre(inner, ethertype=0x0800, key=None, checksum=False, seq=None, pad=b""):
    flags = (0x8000 if checksum else 0) | (0x2000 if key is not None else 0) | \
            (0x1000 if seq is not None else 0)
    h = bytearray(struct.pack(">HH", flags, ethertype))
    if checksum:
        h += b"\0\0\0\0"
    if key is not None:
        h += struct.pack(">I", key)
    if seq is not None:
        h += struct.pack(">I", seq)
    pkt = bytearray(h + inner + pad)
    if checksum:
        pkt[4:6] = struct.pack(">H", csum(bytes(pkt)))
    return bytes(pkt)


def write(target, seeds):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    for f in d.iterdir():
        f.unlink()
    uniq = {}
    for s in seeds:
        if isinstance(s, str):
            s = s.encode()
        if len(s) <= MAX_SEED:
            uniq.setdefault(hashlib.sha1(s).hexdigest(), s)
    for name, s in list(uniq.items())[:MAX_PER_TARGET]:
        (d / name).write_bytes(s)
    print(f"{target}: {min(len(uniq), MAX_PER_TARGET)} files")


def main():
    vx = []
    for p in sorted(VECTORS.glob("*.pcap")):
        vx.extend(pcap_udp_payloads(p))
    vx = [v for v in vx if len(v) <= MAX_SEED]
    # One of each (ethertype, length) is enough: the captures repeat themselves.
    seen, vxlan = set(), []
    for v in vx:
        k = (v[20:22], len(v), v[4:7])
        if k not in seen:
            seen.add(k)
            vxlan.append(v)
    write("decap_vxlan", vxlan)

    inner_ip = [v[22:] for v in vxlan if v[20:22] in (b"\x08\x00", b"\x86\xdd")]
    arp = [v[8:] for v in vx if v[20:22] == b"\x08\x06"]
    if arp:
        # An RFC 5227 probe (sender IP 0.0.0.0) and a gratuitous announcement.
        req = bytearray(arp[0])
        probe = bytearray(req)
        probe[28:32] = bytes(4)
        grat = bytearray(req)
        grat[38:42] = grat[28:32]
        arp += [bytes(probe), bytes(grat)]
    write("decap_udp", inner_ip + [ipv4([10, 244, 1, 1], [10, 244, 2, 1], 1, icmp_echo(56))])
    write("arp_reply", arp)

    a, b = [10, 244, 1, 1], [10, 244, 2, 1]
    small = ipv4(a, b, 1, icmp_echo(56))
    big = ipv4(a, b, 1, icmp_echo(1372))
    v6s = [p for p in inner_ip if p[0] >> 4 == 6][:1]
    gres = [
        gre(small, key=1),
        gre(small),
        gre(small, key=0xDEADBEEF, checksum=True, seq=42),
        gre(small, checksum=True),
        gre(small, seq=0xFFFFFFFF),
        gre(big, key=1),
        gre(small, key=1, pad=b"\0" * 6),
        gre(small, key=1, ethertype=0x86DD),  # EtherType/version mismatch
        gre(small, key=1, ethertype=0x6558),  # transparent Ethernet bridging: refused
    ] + [gre(p, key=1, ethertype=0x86DD) for p in v6s]
    write("decap_gre", gres)
    u1, u2 = [192, 168, 77, 1], [192, 168, 77, 2]
    write("outer_ipv4", [ipv4(u1, u2, 47, g, ident=i) for i, g in enumerate(gres[:7])]
          + [ipv4(u1, u2, 17, small), ipv4(u1, u2, 47, gres[0]) + b"\0\0"])

    write("lease_json", [
        '{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}',
        '{"PublicIP":"192.168.77.1","PublicIPv6":null}',
        '{"PublicIP":"10.0.0.5","PublicIPv6":"fd00::5","BackendType":"gre",'
        '"BackendData":{"Key":7,"Checksum":true}}',
        '{"publicip":"10.0.0.6","BackendType":"","BackendData":null,"Extra":[1,2.5,"x"]}',
        '{"PublicIP":"10.0.0.7","PublicIPv6":"10.0.0.7","BackendType":"udp"}',
        '{"PublicIP":"10.0.0.8","BackendType":"vxlan","BackendData":{"VNI":16777215,'
        '"VtepMAC":"02:42:0a:f4:01:00","Unicode":"\\u00e9\\ud83d\\ude00"}}',
        # Dual stack and IPv6 only, as flannel's vxlan backend writes them.
        '{"PublicIP":"192.168.64.3","PublicIPv6":"fd00:64::3","BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},'
        '"BackendV6Data":{"VNI":1,"VtepMAC":"6a:0b:1e:22:7c:01"}}',
        '{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:64::3","BackendType":"vxlan",'
        '"BackendV6Data":{"VNI":1,"VtepMAC":"6a:0b:1e:22:7c:01"}}',
        '{"PublicIP":"192.168.0.1","PublicIPv6":"fc00::1"}',
    ])
    write("config_json", [
        '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}',
        '{"Network":"10.244.0.0/16","SubnetLen":26,"SubnetMin":"10.244.1.0",'
        '"SubnetMax":"10.244.200.0","Backend":{"Type":"udp","Port":8285}}',
        '{"Network":"10.5.0.0/16","Backend":{"Type":"gre","VNI":7,"Checksum":true,"Sequence":true}}',
        '{"Network":"10.1.0.0/22","Backend":{"Type":"vxlan","VNI":4096,"Port":4789,"MTU":1450}}',
        '{"Network":"172.16.0.0/12","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",'
        '"Backend":{"Type":"vxlan"}}',
        '{"network":"10.0.0.0/8","subnetlen":20,"Backend":null}',
        '{"Network":"192.168.0.0/30"}',
        '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:cafe:42::/56",'
        '"Backend":{"Type":"vxlan"}}',
        '{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/48",'
        '"IPv6SubnetLen":80,"IPv6SubnetMin":"fd00:10:0:5::","IPv6SubnetMax":"fd00:10:0:9::"}',
    ])
    write("subnet_key", [
        "10.244.37.0-24", "10.5.34.0-24&fd00:12:13::-56", "0.0.0.0-0",
        "255.255.255.255-32", "10.244.37.1-24", "10.244.0.0-16&::-0",
        "0.0.0.0-0&fd00:12:13:7::-64", "10.5.1.0-24&fc00::-64",
    ])
    write("subnet_env", [
        "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\n"
        "FLANNEL_IPV6_NETWORK=fd00:5::/56\nFLANNEL_IPV6_SUBNET=fd00:5:0:34::1/64\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        "FLANNEL_IPV6_NETWORK=fd00:5::/56\nFLANNEL_IPV6_SUBNET=fd00:5:0:34::1/64\n"
        "FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n",
        'export FLANNEL_SUBNET="10.5.52.1/24"\nFLANNEL_NETWORK=10.5.0.0/16\n',
    ])
    # tso_gro: [flags, words, gso(2), seq(4), len(2), tos, ttl, ident(2), headroom, opts+pattern]
    ts = bytes([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
    write("tso_gro", [
        bytes([0x02, 3]) + struct.pack(">HIH", 1398 - 64, 1, 65483) + bytes([0, 64, 0, 1, 50])
        + ts + b"overlay",
        bytes([0x03, 3]) + struct.pack(">HIH", 1386 - 64, 0xFFFFFF00, 65463) + bytes([0, 64, 0, 0, 50])
        + ts + b"v6",
        bytes([0x00, 0]) + struct.pack(">HIH", 1398 - 64, 7, 700) + bytes([0, 64, 0, 0, 0]),
        bytes([0x04, 0]) + struct.pack(">HIH", 200 - 64, 7, 5000) + bytes([0x10, 1, 0, 0, 22]) + b"fin",
        bytes([0x08, 0]) + struct.pack(">HIH", 0, 7, 3000) + bytes([0xb8, 64, 0, 0, 22]) + b"cwr",
    ])
    # rx_checks: [sender (bit 0 IPv6 underlay, bit 1 unknown), gso(2)] + inner packet
    v6a, v6b = fd00_10(2, 5), fd00_10(1, 7)
    write("rx_checks", [
        bytes([1]) + struct.pack(">H", 500) + ipv6_pkt(v6a, v6b, 6, tcp_partial(v6a, v6b, 1200)),
        bytes([0]) + struct.pack(">H", 0) + ipv6_pkt(v6a, v6b, 6, tcp_partial(v6a, v6b, 100)),
        bytes([1]) + struct.pack(">H", 0) + ipv6_pkt(v6a, v6b, 17, udp_partial(v6a, v6b, 64)),
        bytes([1]) + struct.pack(">H", 0) + ipv6_pkt(fd00_10(3, 5), v6b, 17,
                                                      udp_partial(fd00_10(3, 5), v6b, 8)),
        bytes([0]) + struct.pack(">H", 500)
        + ipv4(bytes([10, 244, 2, 5]), bytes([10, 244, 1, 7]), 6,
               tcp_partial(bytes([10, 244, 2, 5]), bytes([10, 244, 1, 7]), 1200)),
    ])
    # wg_receive: each WireGuard message type at its length (initiation 148, response 92,
    # cookie reply 64, data 32 + payload), with zero keys and MACs.
    write("wg_receive", [
        struct.pack("<II", 1, 7) + bytes(140),
        struct.pack("<III", 2, 7, 0x100) + bytes(80),
        struct.pack("<II", 3, 0x100) + bytes(56),
        struct.pack("<IIQ", 4, 0x100, 0) + bytes(16),
        struct.pack("<IIQ", 4, 0x100, 5) + bytes(16 + 84),
    ])


def fd00_10(subnet, host):
    """fd00:10:0:<subnet>::<host> as 16 bytes."""
    return struct.pack(">8H", 0xFD00, 0x10, 0, subnet, 0, 0, 0, host)


def ipv6_pkt(src, dst, nh, payload):
    return struct.pack(">IHBB", 0x60000000, len(payload), nh, 64) + src + dst + payload


def pseudo(src, dst, proto, length):
    """The folded, non-inverted pseudo-header sum: a partial checksum field."""
    if len(src) == 4:
        b = src + dst + struct.pack(">BBH", 0, proto, length)
    else:
        b = src + dst + struct.pack(">IxxxB", length, proto)
    return (~csum(b)) & 0xFFFF


def tcp_partial(src, dst, n):
    body = bytes((i * 13) & 0xFF for i in range(n))
    h = struct.pack(">HHIIBBHHH", 40000, 5201, 1, 2, 0x50, 0x18, 502, 0, 0)
    h = h[:16] + struct.pack(">H", pseudo(src, dst, 6, 20 + n)) + h[18:]
    return h + body


def udp_partial(src, dst, n):
    body = bytes(n)
    return struct.pack(">HHHH", 5555, 7777, 8 + n, pseudo(src, dst, 17, 8 + n)) + body


if __name__ == "__main__":
    main()
