//! Carving one flat buffer into named views (activations, scratch): the views are disjoint
//! sub-slices taken in order, so they can be borrowed mutably at the same time.

/// A slice that can hand out its first `n` elements and keep the rest.
pub trait Carve: Sized {
    fn take_front(&mut self, n: usize) -> Self;
    fn remaining(&self) -> usize;
}

impl<F> Carve for &[F] {
    fn take_front(&mut self, n: usize) -> Self {
        let (head, tail) = std::mem::take(self).split_at(n);
        *self = tail;
        head
    }
    fn remaining(&self) -> usize {
        self.len()
    }
}

impl<F> Carve for &mut [F] {
    fn take_front(&mut self, n: usize) -> Self {
        let (head, tail) = std::mem::take(self).split_at_mut(n);
        *self = tail;
        head
    }
    fn remaining(&self) -> usize {
        self.len()
    }
}

/// Two disjoint mutable views of one buffer, `a` before `b` (e.g. a weight and its bias).
pub fn two_mut<F>(
    buf: &mut [F],
    a: std::ops::Range<usize>,
    b: std::ops::Range<usize>,
) -> (&mut [F], &mut [F]) {
    assert!(a.end <= b.start, "two_mut: ranges out of order");
    let (head, tail) = buf.split_at_mut(b.start);
    (&mut head[a], &mut tail[..b.end - b.start])
}
