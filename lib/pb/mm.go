package pb

import "encoding/binary"

// An Mm record can hold 65,530 Vma records (vm.max_map_count), and a
// decoded record takes ~190 bytes: 12 MB that a stage would hold at once.
// MarshalMm and UnmarshalMm handle them one at a time, so that the stages
// keep their VMAs in a form of their own.

// MmVmasField is the field number of Mm.vmas (cr.proto; TestMmVmasField).
const MmVmasField FieldNumber = 2

// vmaSizeGuess is what a Vma record of anonymous memory takes, with its
// tag and length: the record's buffer is sized for n of them at first,
// not grown from nothing (10 MB allocated for 60,000 VMAs, for a record
// of 1.8 MB).
const vmaSizeGuess = 32

// MarshalMm encodes mm, whose Vmas must be empty, with n Vma records that
// fill(i, v) sets in turn, byte for byte as a deterministic proto.Marshal
// of mm with them in its Vmas: its fields in the order of their numbers.
func MarshalMm(mm *Mm, n int, fill func(i int, v *Vma)) ([]byte, error) {
	pid, vmas := mm.Pid, mm.Vmas
	mm.Pid, mm.Vmas = 0, nil // mm without them is the record's tail
	defer func() { mm.Pid, mm.Vmas = pid, vmas }()
	b := make([]byte, 0, 16+n*vmaSizeGuess+Size(mm))
	b, err := MarshalAppend(b, &Mm{Pid: pid})
	if err != nil {
		return nil, err
	}
	var v Vma
	for i := range n {
		fill(i, &v)
		b = appendTag(b, MmVmasField, BytesType)
		b = binary.AppendUvarint(b, uint64(Size(&v)))
		if b, err = MarshalAppend(b, &v); err != nil {
			return nil, err
		}
	}
	return MarshalAppend(b, mm)
}

// UnmarshalMm decodes the Mm record b into mm, but for its Vma records,
// which it passes to each in turn. The record it passes is reused: each
// keeps what it needs of it (the messages it points to stay its own).
func UnmarshalMm(b []byte, mm *Mm, each func(v *Vma) error) error {
	var rest []byte
	var v Vma
	err := EachField(b, func(num FieldNumber, typ WireType, field []byte) error {
		if num != MmVmasField || typ != BytesType {
			rest = appendTag(rest, num, typ)
			rest = append(rest, field...)
			return nil
		}
		rec, err := consumeBytes(field)
		if err != nil {
			return err
		}
		if err := Unmarshal(rec, &v); err != nil {
			return err
		}
		return each(&v)
	})
	if err != nil {
		return err
	}
	return Unmarshal(rest, mm)
}
