package peercred

import "unsafe"

func ptr(s []uint32) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(s)) }
