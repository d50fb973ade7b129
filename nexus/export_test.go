package nexus

// OpenEventfdPort opens a port woken the way a port in another process is:
// through its channel's eventfd and a port waiter. The app end is attached
// in this process, so the tests can drive that path.
func (n *Nexus) OpenEventfdPort(name string) (*Port, error) {
	return n.open(name, true, true, PortOptions{})
}
