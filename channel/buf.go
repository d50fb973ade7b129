package channel

// Buf is one packet buffer handed across the channel API. Index names the
// buffer in the pool; Data is its bytes: the whole buffer after an Alloc,
// the packet after a Receive or TakeTX. Send and Deliver use len(Data) as
// the packet length. A Buf does not own memory: the buffer belongs to
// whoever was handed the index, until they pass it on.
type Buf struct {
	Index uint32
	Flags uint16
	Data  []byte
}
