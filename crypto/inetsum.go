package crypto

import (
	"encoding/binary"
	"math/bits"
)

// The Internet checksum (RFC 1071) of IP, TCP and UDP headers and payloads,
// for the userspace tunnel's segmentation and coalescing of TUN packets.

// sumNoFold adds b, as big-endian 16-bit words, to the running 64-bit sum
// acc (one's complement arithmetic, carries kept in the upper bits until
// fold). A trailing odd byte counts as the high byte of a last word.
func sumNoFold(b []byte, acc uint64) uint64 {
	var carry uint64
	for len(b) >= 32 {
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b), 0)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[8:]), carry)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[16:]), carry)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[24:]), carry)
		acc += carry
		b = b[32:]
	}
	for len(b) >= 8 {
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b), 0)
		acc += carry
		b = b[8:]
	}
	if len(b) >= 4 {
		acc, carry = bits.Add64(acc, uint64(binary.BigEndian.Uint32(b)), 0)
		acc += carry
		b = b[4:]
	}
	if len(b) >= 2 {
		acc, carry = bits.Add64(acc, uint64(binary.BigEndian.Uint16(b)), 0)
		acc += carry
		b = b[2:]
	}
	if len(b) == 1 {
		acc, carry = bits.Add64(acc, uint64(b[0])<<8, 0)
		acc += carry
	}
	return acc
}

// fold reduces a 64-bit one's complement sum to 16 bits (not inverted).
func fold(acc uint64) uint16 {
	acc = (acc >> 32) + (acc & 0xffffffff)
	acc = (acc >> 32) + (acc & 0xffffffff)
	acc = (acc >> 16) + (acc & 0xffff)
	acc = (acc >> 16) + (acc & 0xffff)
	return uint16(acc)
}

// pseudoHeaderSum is the unfolded sum of a TCP or UDP pseudo-header: source
// and destination address (4 or 16 bytes each), protocol and the length of
// the transport header and payload.
func pseudoHeaderSum(proto uint8, src, dst []byte, length int) uint64 {
	acc := sumNoFold(src, 0)
	acc = sumNoFold(dst, acc)
	return acc + uint64(proto) + uint64(length)
}
