package syscalls

import "golang.org/x/sys/unix"

// The state a netlink link message (RTM_NEWLINK, RTM_DELLINK) carries, read
// from its header type and interface flags.

// LinkDeleted reports whether a link message of type msgType says the link
// is gone.
func LinkDeleted(msgType uint16) bool { return msgType == unix.RTM_DELLINK }

// LinkUp reports whether an interface's flags say it is administratively up.
func LinkUp(flags uint32) bool { return flags&unix.IFF_UP != 0 }

// LinkCarrier reports whether an interface's flags say it has a carrier
// (IFF_LOWER_UP).
func LinkCarrier(flags uint32) bool { return flags&unix.IFF_LOWER_UP != 0 }
