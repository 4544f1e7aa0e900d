//! 16-lane numbers for the wavefront kernel (`integrator::wavefront`). Every operation is one
//! loop of one IEEE operation over the lanes, which LLVM turns into one AVX-512 instruction
//! (two AVX2, four SSE2 or NEON ones): each lane gets the operation the scalar code does, so a
//! kernel written with these computes, lane for lane, the bits of the scalar path. No fused
//! multiply-add, no approximate reciprocal, nothing from the C library.
//!
//! `V3`'s methods are named after the operators (`add`, `mul`, ...) but take a scalar lane
//! vector where the scalar code scales a vector, so they are methods rather than operator
//! impls.
#![allow(clippy::needless_range_loop, clippy::should_implement_trait)]

use std::ops::{Add, BitAnd, BitOr, BitXor, Div, Mul, Neg, Not, Shl, Shr, Sub};

pub const W: usize = 16;

#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub struct F(pub [f32; W]);
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub struct U(pub [u32; W]);
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub struct U64(pub [u64; W]);
/// A mask: all ones or all zeros per lane.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub struct M(pub [u32; W]);

macro_rules! lanewise {
    ($ty:ident, $el:ty, $tr:ident, $f:ident, $op:tt) => {
        impl $tr for $ty {
            type Output = $ty;
            #[inline(always)]
            fn $f(self, o: $ty) -> $ty {
                let mut r = [<$el>::default(); W];
                for i in 0..W {
                    r[i] = self.0[i] $op o.0[i];
                }
                $ty(r)
            }
        }
    };
}
lanewise!(F, f32, Add, add, +);
lanewise!(F, f32, Sub, sub, -);
lanewise!(F, f32, Mul, mul, *);
lanewise!(F, f32, Div, div, /);
lanewise!(U, u32, BitAnd, bitand, &);
lanewise!(U, u32, BitOr, bitor, |);
lanewise!(U, u32, BitXor, bitxor, ^);
lanewise!(U64, u64, BitXor, bitxor, ^);
lanewise!(M, u32, BitAnd, bitand, &);
lanewise!(M, u32, BitOr, bitor, |);

impl Neg for F {
    type Output = F;
    #[inline(always)]
    fn neg(self) -> F {
        self.map(|x| -x)
    }
}
impl Not for M {
    type Output = M;
    #[inline(always)]
    fn not(self) -> M {
        let mut r = [0u32; W];
        for i in 0..W {
            r[i] = !self.0[i];
        }
        M(r)
    }
}
impl Shr<u32> for U {
    type Output = U;
    #[inline(always)]
    fn shr(self, s: u32) -> U {
        let mut r = [0u32; W];
        for i in 0..W {
            r[i] = self.0[i] >> s;
        }
        U(r)
    }
}
impl Shl<u32> for U {
    type Output = U;
    #[inline(always)]
    fn shl(self, s: u32) -> U {
        let mut r = [0u32; W];
        for i in 0..W {
            r[i] = self.0[i] << s;
        }
        U(r)
    }
}

impl F {
    #[inline(always)]
    pub fn splat(x: f32) -> F {
        F([x; W])
    }
    #[inline(always)]
    pub fn map(self, f: impl Fn(f32) -> f32) -> F {
        let mut r = [0f32; W];
        for i in 0..W {
            r[i] = f(self.0[i]);
        }
        F(r)
    }
    #[inline(always)]
    pub fn sqrt(self) -> F {
        self.map(f32::sqrt)
    }
    #[inline(always)]
    pub fn abs(self) -> F {
        self.map(f32::abs)
    }
    #[inline(always)]
    pub fn max(self, o: F) -> F {
        let mut r = [0f32; W];
        for i in 0..W {
            r[i] = if self.0[i] > o.0[i] {
                self.0[i]
            } else {
                o.0[i]
            };
        }
        F(r)
    }
    #[inline(always)]
    pub fn min(self, o: F) -> F {
        let mut r = [0f32; W];
        for i in 0..W {
            r[i] = if self.0[i] < o.0[i] {
                self.0[i]
            } else {
                o.0[i]
            };
        }
        F(r)
    }
    #[inline(always)]
    pub fn bits(self) -> U {
        let mut r = [0u32; W];
        for i in 0..W {
            r[i] = self.0[i].to_bits();
        }
        U(r)
    }
    #[inline(always)]
    pub fn from_bits(u: U) -> F {
        let mut r = [0f32; W];
        for i in 0..W {
            r[i] = f32::from_bits(u.0[i]);
        }
        F(r)
    }
    #[inline(always)]
    fn cmp(self, o: F, f: impl Fn(f32, f32) -> bool) -> M {
        let mut r = [0u32; W];
        for i in 0..W {
            r[i] = 0u32.wrapping_sub(u32::from(f(self.0[i], o.0[i])));
        }
        M(r)
    }
    #[inline(always)]
    pub fn lt(self, o: F) -> M {
        self.cmp(o, |a, b| a < b)
    }
    #[inline(always)]
    pub fn le(self, o: F) -> M {
        self.cmp(o, |a, b| a <= b)
    }
    #[inline(always)]
    pub fn gt(self, o: F) -> M {
        self.cmp(o, |a, b| a > b)
    }
    #[inline(always)]
    pub fn ge(self, o: F) -> M {
        self.cmp(o, |a, b| a >= b)
    }
    #[inline(always)]
    pub fn ne(self, o: F) -> M {
        self.cmp(o, |a, b| a != b)
    }
    /// Lanes whose absolute value is infinite.
    #[inline(always)]
    pub fn eq_inf(self) -> M {
        self.cmp(F::splat(f32::INFINITY), |a, b| a == b)
    }
    /// `f32::clamp`: `lo` below, `hi` above, NaN as it is.
    #[inline(always)]
    pub fn clamp(self, lo: f32, hi: f32) -> F {
        self.map(|x| {
            let x = if x < lo { lo } else { x };
            if x > hi {
                hi
            } else {
                x
            }
        })
    }
    #[inline(always)]
    pub fn is_finite(self) -> M {
        let b = self.bits() & U::splat(0x7f80_0000);
        let mut r = [0u32; W];
        for i in 0..W {
            r[i] = 0u32.wrapping_sub(u32::from(b.0[i] != 0x7f80_0000));
        }
        M(r)
    }
    /// Truncation to integers (values in i32 range).
    #[inline(always)]
    pub fn to_i32(self) -> U {
        let mut r = [0u32; W];
        for i in 0..W {
            r[i] = self.0[i] as i32 as u32;
        }
        U(r)
    }
    #[inline(always)]
    pub fn from_i32(u: U) -> F {
        let mut r = [0f32; W];
        for i in 0..W {
            r[i] = u.0[i] as i32 as f32;
        }
        F(r)
    }
}

impl M {
    #[inline(always)]
    pub fn splat(b: bool) -> M {
        M([0u32.wrapping_sub(u32::from(b)); W])
    }
    #[inline(always)]
    pub fn any(self) -> bool {
        self.0.iter().fold(0, |a, &b| a | b) != 0
    }
    #[inline(always)]
    pub fn lane(self, i: usize) -> bool {
        self.0[i] != 0
    }
    /// `a` where set, else `b`.
    #[inline(always)]
    pub fn select(self, a: F, b: F) -> F {
        let mut r = [0f32; W];
        for i in 0..W {
            r[i] = f32::from_bits((a.0[i].to_bits() & self.0[i]) | (b.0[i].to_bits() & !self.0[i]));
        }
        F(r)
    }
    #[inline(always)]
    pub fn select_u(self, a: U, b: U) -> U {
        let mut r = [0u32; W];
        for i in 0..W {
            r[i] = (a.0[i] & self.0[i]) | (b.0[i] & !self.0[i]);
        }
        U(r)
    }
    #[inline(always)]
    pub fn from_bools(b: &[bool; W]) -> M {
        let mut r = [0u32; W];
        for i in 0..W {
            r[i] = 0u32.wrapping_sub(u32::from(b[i]));
        }
        M(r)
    }
}

impl U {
    #[inline(always)]
    pub fn splat(x: u32) -> U {
        U([x; W])
    }
    #[inline(always)]
    pub fn wrapping_mul(self, c: u32) -> U {
        let mut r = [0u32; W];
        for i in 0..W {
            r[i] = self.0[i].wrapping_mul(c);
        }
        U(r)
    }
    #[inline(always)]
    pub fn wrapping_add(self, o: U) -> U {
        let mut r = [0u32; W];
        for i in 0..W {
            r[i] = self.0[i].wrapping_add(o.0[i]);
        }
        U(r)
    }
    #[inline(always)]
    pub fn reverse_bits(self) -> U {
        let mut r = [0u32; W];
        for i in 0..W {
            r[i] = self.0[i].reverse_bits();
        }
        U(r)
    }
    /// `t[lane]` of each lane (a gather); every index must be below 256.
    #[inline(always)]
    pub fn lookup(self, t: &[u32; 256]) -> U {
        let mut r = [0u32; W];
        for i in 0..W {
            r[i] = t[(self.0[i] & 255) as usize];
        }
        U(r)
    }
}

impl U64 {
    #[inline(always)]
    pub fn wrapping_mul(self, c: u64) -> U64 {
        let mut r = [0u64; W];
        for i in 0..W {
            r[i] = self.0[i].wrapping_mul(c);
        }
        U64(r)
    }
    #[inline(always)]
    pub fn shr(self, s: u32) -> U64 {
        let mut r = [0u64; W];
        for i in 0..W {
            r[i] = self.0[i] >> s;
        }
        U64(r)
    }
    #[inline(always)]
    pub fn lo(self) -> U {
        let mut r = [0u32; W];
        for i in 0..W {
            r[i] = self.0[i] as u32;
        }
        U(r)
    }
    #[inline(always)]
    pub fn hi(self) -> U {
        let mut r = [0u32; W];
        for i in 0..W {
            r[i] = (self.0[i] >> 32) as u32;
        }
        U(r)
    }
    #[inline(always)]
    pub fn from_u32(u: U) -> U64 {
        let mut r = [0u64; W];
        for i in 0..W {
            r[i] = u.0[i] as u64;
        }
        U64(r)
    }
}

/// A 3-vector of lanes.
#[derive(Clone, Copy, Debug)]
pub struct V3 {
    pub x: F,
    pub y: F,
    pub z: F,
}

impl V3 {
    #[inline(always)]
    pub fn new(x: F, y: F, z: F) -> V3 {
        V3 { x, y, z }
    }
    #[inline(always)]
    pub fn load(a: &[[f32; W]; 3]) -> V3 {
        V3::new(F(a[0]), F(a[1]), F(a[2]))
    }
    #[inline(always)]
    pub fn store(self, a: &mut [[f32; W]; 3]) {
        a[0] = self.x.0;
        a[1] = self.y.0;
        a[2] = self.z.0;
    }
    #[inline(always)]
    pub fn dot(self, o: V3) -> F {
        // As glam's SSE dot: (x*x' + y*y') + z*z'.
        self.x * o.x + self.y * o.y + self.z * o.z
    }
    #[inline(always)]
    pub fn cross(self, o: V3) -> V3 {
        V3::new(
            self.y * o.z - self.z * o.y,
            self.z * o.x - self.x * o.z,
            self.x * o.y - self.y * o.x,
        )
    }
    #[inline(always)]
    pub fn add(self, o: V3) -> V3 {
        V3::new(self.x + o.x, self.y + o.y, self.z + o.z)
    }
    #[inline(always)]
    pub fn sub(self, o: V3) -> V3 {
        V3::new(self.x - o.x, self.y - o.y, self.z - o.z)
    }
    #[inline(always)]
    pub fn scale(self, s: F) -> V3 {
        V3::new(self.x * s, self.y * s, self.z * s)
    }
    #[inline(always)]
    pub fn mul(self, o: V3) -> V3 {
        V3::new(self.x * o.x, self.y * o.y, self.z * o.z)
    }
    #[inline(always)]
    pub fn div(self, s: F) -> V3 {
        V3::new(self.x / s, self.y / s, self.z / s)
    }
    #[inline(always)]
    pub fn neg(self) -> V3 {
        V3::new(-self.x, -self.y, -self.z)
    }
    #[inline(always)]
    pub fn select(m: M, a: V3, b: V3) -> V3 {
        V3::new(m.select(a.x, b.x), m.select(a.y, b.y), m.select(a.z, b.z))
    }
    #[inline(always)]
    pub fn max_element(self) -> F {
        self.x.max(self.y).max(self.z)
    }
    /// Lanes where the vector is not zero (`Vec3A != Vec3A::ZERO`).
    #[inline(always)]
    pub fn ne_zero(self) -> M {
        let z = F::splat(0.0);
        self.x.ne(z) | self.y.ne(z) | self.z.ne(z)
    }
    #[inline(always)]
    pub fn abs(self) -> V3 {
        V3::new(self.x.abs(), self.y.abs(), self.z.abs())
    }
}
