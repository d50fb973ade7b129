// Package layout holds no code: its tests check rules about the shape of
// the whole module that no single package can check for itself, such as
// which packages may make raw system calls.
package layout
