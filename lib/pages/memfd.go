package pages

import (
	"fmt"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
)

// Shared mappings of a memfd (memfd_create(2)) that no fd holds any more:
// a JIT's double mapping, one view writable and one executable, of a memfd
// it closed (Erlang's "/memfd:vmem"; .NET's double mapper), or keeps (a
// JVM's ZGC heap, mapped three times). The memfd is a shmem object as
// shared anonymous memory is, and is dumped as one (every page it holds in
// the mapped range, once per dump: objects.go), with its name, size, mode
// and seals (Vma.memfd); a restore makes a memfd again. An fd of it is
// cr-files' (MemfdState.mapped: its contents are these pages). A private
// mapping of one is refused.

// isMemfdPath: the name the kernel gives a mapping of a memfd.
func isMemfdPath(m *proc.Mapping) bool {
	return m.Deleted && strings.HasPrefix(m.Path, "/memfd:")
}

// memfdVma completes x, a shared mapping of a memfd, or refuses it.
func memfdVma(pid int, x *vma) error {
	m := x.m
	fd, err := unix.Open(mapFile(pid, m), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return procErr(pid, fmt.Errorf("vma %x-%x: %s: %w", m.Start, m.End, m.Path, err))
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	var fs unix.Statfs_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("pid %d vma %x-%x: fstat %s: %w", pid, m.Start, m.End, m.Path, err)
	}
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return fmt.Errorf("pid %d vma %x-%x: fstatfs %s: %w", pid, m.Start, m.End, m.Path, err)
	}
	if fs.Type == unix.HUGETLBFS_MAGIC {
		return unsupported(pid, m, fmt.Sprintf("a mapping of the hugetlb memfd %s", m.Path), stage.HintHugetlb)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return fmt.Errorf("pid %d vma %x-%x: F_GET_SEALS of %s: %w", pid, m.Start, m.End, m.Path, err)
	}
	// F_SEAL_SEAL alone is a memfd made without MFD_ALLOW_SEALING. Other
	// seals forbid what a restore does (writing the pages, sizing it).
	if seals&^unix.F_SEAL_SEAL != 0 {
		return unsupported(pid, m, fmt.Sprintf("a mapping of the sealed memfd %s (seals %#x)", m.Path, seals), "")
	}
	// Its device and inode are the object's identity, as for shared
	// anonymous memory.
	x.kind = pb.VmaKind_VMA_SHARED_ANON
	x.obj = &vmaObject{memfd: &pb.MemfdState{Name: strings.TrimPrefix(m.Path, "/memfd:"), Size: st.Size, Seals: uint32(seals), Mode: st.Mode & 0o7777}}
	x.scan = scanShared
	return nil
}

// checkMemfdData refuses a memfd of vmas that holds data outside the
// ranges pid maps: only the mapped ranges are dumped, and the rest would
// come back as zeros.
func checkMemfdData(pid int, vmas []vma) error {
	byInode := map[uint64][]*vma{}
	for i := range vmas {
		if vmas[i].memfd() != nil {
			byInode[vmas[i].m.Inode] = append(byInode[vmas[i].m.Inode], &vmas[i])
		}
	}
	for _, xs := range byInode {
		var mapped [][2]int64
		for _, x := range xs {
			off := int64(x.m.Offset)
			mapped = append(mapped, [2]int64{off, off + int64(x.m.Len())})
		}
		sort.Slice(mapped, func(i, j int) bool { return mapped[i][0] < mapped[j][0] })
		m := xs[0].m
		fd, err := unix.Open(mapFile(pid, m), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return procErr(pid, fmt.Errorf("vma %x-%x: %s: %w", m.Start, m.End, m.Path, err))
		}
		off, err := unmappedData(fd, xs[0].memfd().Size, mapped)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("pid %d vma %x-%x: %s: %w", pid, m.Start, m.End, m.Path, err)
		}
		if off >= 0 {
			return unsupported(pid, m, fmt.Sprintf("the memfd %s, which holds data at offset %#x that no mapping of the process shows", m.Path, off), "")
		}
	}
	return nil
}

// unmappedData returns the first offset below size where the file fd holds
// data outside the ranges mapped (sorted by start), or -1.
func unmappedData(fd int, size int64, mapped [][2]int64) (int64, error) {
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO || (err == nil && data >= size) {
			return -1, nil
		}
		if err != nil {
			return 0, fmt.Errorf("SEEK_DATA: %w", err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return 0, fmt.Errorf("SEEK_HOLE: %w", err)
		}
		// [data, hole) must lie in the union of the mapped ranges.
		for _, r := range mapped {
			if r[0] <= data && data < r[1] {
				data = min(r[1], hole)
			}
		}
		if data < hole {
			return data, nil
		}
		off = hole
	}
	return -1, nil
}
