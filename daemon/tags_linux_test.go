package daemon

import "testing"

// TestMessageTagsDistinct: every kind of weft message over gossip has a
// tag of its own, or one kind would be read as another.
func TestMessageTagsDistinct(t *testing.T) {
	tags := map[string]byte{
		"ring delta": tagRingDelta, "alloc message": tagAllocMsg,
		"key ack": tagKeyAck, "key switched": tagKeySwitched,
		"relay signal":           tagRelaySignal,
		"unsigned alloc message": tagUnsignedAllocMsg, "unsigned key ack": tagUnsignedKeyAck,
		"unsigned key switched": tagUnsignedKeySwitched,
	}
	seen := map[byte]string{}
	for name, tag := range tags {
		if other, dup := seen[tag]; dup {
			t.Errorf("%s and %s share the tag %q", name, other, tag)
		}
		seen[tag] = name
	}
}
