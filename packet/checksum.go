package packet

// Sum adds b's big-endian 16-bit words (a last odd byte padded with zero) to
// acc, unfolded: the Internet checksum's sum (RFC 1071). Unfolded sums of
// pieces add up, which is how the flowswitch derives a super packet's
// checksum from its segments'. It does not overflow for b up to 128 KiB.
func Sum(b []byte, acc uint32) uint32 {
	for len(b) >= 2 {
		acc += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint32(b[0]) << 8
	}
	return acc
}

// Fold folds an unfolded sum into 16 bits, one's complement; the checksum
// field holds its complement.
func Fold(s uint32) uint16 {
	s = s>>16 + s&0xffff
	s = s>>16 + s&0xffff
	return uint16(s)
}
