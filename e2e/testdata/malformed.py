# Sends every class of malformed frame TestHostile names, from the peer
# namespace, to the user-space server's address and port: a few rounds of
# each, then prints how many frames went out and the class names.
#
# usage: malformed.py IFACE DST_MAC DST_IPV4 DST_IPV6 PORT ROUNDS
import random
import sys

from scapy.all import (ICMP, IP, TCP, UDP, Ether, IPOption_NOP, IPOption_RR,
                       IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                       IPv6ExtHdrHopByHop, Raw, conf, fragment, sendp)

conf.verb = 0
iface, dmac, dst, dst6 = sys.argv[1:5]
port, rounds = int(sys.argv[5]), int(sys.argv[6])
rnd = random.Random(1)  # the same garbage every run


def junk(n):
    return bytes(rnd.getrandbits(8) for _ in range(n))


E = Ether(dst=dmac)
syn = TCP(sport=40000, dport=port, flags="S", seq=1000)
classes = {
    # IPv4 header length below the minimum, and beyond the packet.
    "bad-ihl": [E / IP(dst=dst, ihl=3) / syn, E / IP(dst=dst, ihl=15) / syn],
    # IPv4 total length beyond the frame, and below the header.
    "bad-ip-length": [E / IP(dst=dst, len=1500) / syn, E / IP(dst=dst, len=10) / syn],
    "bad-checksums": [
        E / IP(dst=dst, chksum=0x1234) / syn,
        E / IP(dst=dst) / TCP(sport=40001, dport=port, flags="S", chksum=0x1234),
        E / IP(dst=dst) / UDP(sport=40002, dport=port, chksum=0x1234) / Raw(b"x" * 20),
    ],
    "bad-udp-length": [E / IP(dst=dst) / UDP(sport=40003, dport=port, len=200) / Raw(b"x" * 20),
                       E / IP(dst=dst) / UDP(sport=40003, dport=port, len=4) / Raw(b"x" * 20)],
    "ipv4-options": [E / IP(dst=dst, options=[IPOption_NOP()] * 4) / syn,
                     E / IP(dst=dst, options=[IPOption_RR()]) / syn],
    # A SYN in 16-byte fragments; two fragments overlapping with different
    # bytes; a fragment whose end is past 65535.
    "fragments": [E / f for f in fragment(IP(dst=dst) / TCP(sport=40004, dport=port, flags="S") / Raw(b"y" * 64), fragsize=16)],
    "overlapping-fragments": [E / IP(dst=dst, id=777, flags="MF", frag=0, proto=6) / Raw(b"a" * 24),
                              E / IP(dst=dst, id=777, frag=1, proto=6) / Raw(b"b" * 24)],
    "oversize-fragment": [E / IP(dst=dst, id=778, frag=8189, proto=6) / Raw(b"c" * 64)],
    # TCP data offset below 5 words, and past the packet.
    "bad-data-offset": [E / IP(dst=dst) / TCP(sport=40005, dport=port, flags="S", dataofs=2),
                        E / IP(dst=dst) / TCP(sport=40006, dport=port, flags="S", dataofs=15)],
    "odd-flags": [E / IP(dst=dst) / TCP(sport=40010 + i, dport=port, flags=f)
                  for i, f in enumerate(["SF", "SR", "FPU", "", "FSRPAUEC", "SA", "U", "F", "R"])],
    "land": [E / IP(src=dst, dst=dst) / TCP(sport=port, dport=port, flags="S")],
    "garbage-ipv4": [Ether(dst=dmac, type=0x0800) / Raw(junk(n)) for n in (1, 19, 20, 60, 200)],
    "garbage-ipv6": [Ether(dst=dmac, type=0x86DD) / Raw(junk(n)) for n in (1, 39, 40, 80)],
    "garbage-ethernet": [Raw(junk(n)) for n in (1, 13, 14, 60, 1514)],
    "bad-ipv6": [
        E / IPv6(dst=dst6, plen=1000) / TCP(sport=40020, dport=port, flags="S"),
        E / IPv6(dst=dst6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrDestOpt() / TCP(sport=40021, dport=port, flags="S"),
        E / IPv6(dst=dst6) / IPv6ExtHdrFragment(m=1, id=5) / TCP(sport=40022, dport=port, flags="S"),
    ],
    "odd-icmp": [E / IP(dst=dst) / ICMP(type=3, code=4) / IP(src=dst, dst="198.18.0.2") / TCP(sport=port, dport=40000),
                 E / IP(dst=dst) / ICMP(type=99) / Raw(junk(30))],
}
frames = [Raw(bytes(p)) for _ in range(rounds) for ps in classes.values() for p in ps]
sendp(frames, iface=iface, verbose=0)
print(len(frames), " ".join(classes))
