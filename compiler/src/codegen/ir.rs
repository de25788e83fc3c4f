//! A thin layer over `cranelift_frontend::FunctionBuilder` for writing kernels: constants,
//! loads and stores, counted loops and f32x4 helpers. Every kernel parameter and size is an
//! i64 (pointers included: the targets are 64-bit).

use cranelift_codegen::ir::{
    condcodes::{FloatCC, IntCC},
    types::{F32, F32X4, I32, I32X4, I64},
    Endianness, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_frontend::FunctionBuilder;
use cranformer_runtime::abi::Field;

/// Memory flags for every access: no trap (the host sized every buffer), alignment not
/// promised (vectors are loaded with unaligned moves).
pub fn mem() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// The integer type of a runtime field's width.
fn int_type(f: Field) -> Type {
    match f.bytes {
        8 => I64,
        4 => I32,
        b => panic!("the runtime's ABI has only 4- and 8-byte fields, got {b}"),
    }
}

/// A kernel under construction.
pub struct Kb<'a> {
    pub b: FunctionBuilder<'a>,
    /// Whether the kernel's ISA has fused multiply-add ([`Kb::fma`]).
    pub native_fma: bool,
}

impl<'a> Kb<'a> {
    pub fn i(&mut self, v: i64) -> Value {
        self.b.ins().iconst(I64, v)
    }
    pub fn f(&mut self, v: f32) -> Value {
        self.b.ins().f32const(v)
    }
    /// `[v, v, v, v]`.
    pub fn splat(&mut self, v: f32) -> Value {
        let s = self.f(v);
        self.b.ins().splat(F32X4, s)
    }
    pub fn add(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().iadd(a, b)
    }
    pub fn addi(&mut self, a: Value, b: i64) -> Value {
        self.b.ins().iadd_imm_s(a, b)
    }
    pub fn mul(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().imul(a, b)
    }
    pub fn muli(&mut self, a: Value, b: i64) -> Value {
        self.b.ins().imul_imm_s(a, b)
    }
    /// `base + idx * scale`.
    pub fn at(&mut self, base: Value, idx: Value, scale: i64) -> Value {
        let o = self.muli(idx, scale);
        self.add(base, o)
    }
    pub fn ld(&mut self, ty: cranelift_codegen::ir::Type, p: Value, off: i32) -> Value {
        self.b.ins().load(ty, mem(), p, off)
    }
    pub fn st(&mut self, v: Value, p: Value, off: i32) {
        self.b.ins().store(mem(), v, p, off);
    }
    /// Loads a runtime struct's field at `p` (as I64 or I32 by its width: see
    /// `cranformer_runtime::abi`).
    pub fn ld_field(&mut self, p: Value, f: Field) -> Value {
        self.ld(int_type(f), p, f.offset)
    }
    /// Stores `v` into a runtime struct's field at `p`; `v` must have the field's width.
    pub fn st_field(&mut self, v: Value, p: Value, f: Field) {
        let ty = self.b.func.dfg.value_type(v);
        assert_eq!(
            ty,
            int_type(f),
            "compiler bug: storing {ty} into a {}-byte runtime field",
            f.bytes
        );
        self.st(v, p, f.offset);
    }
    pub fn ldf(&mut self, p: Value, off: i32) -> Value {
        self.ld(F32, p, off)
    }
    pub fn ldv(&mut self, p: Value, off: i32) -> Value {
        self.ld(F32X4, p, off)
    }
    /// `a·b + c`: one fused instruction where the ISA has FMA, else a multiply and an add
    /// (rounded twice). Cranelift would lower `fma` without FMA to a libm call per lane, which
    /// also spills every vector register around it: BERT-base on an SSE4.2-only ISA ran 33x
    /// slower that way.
    pub fn fma(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.native_fma {
            self.b.ins().fma(a, b, c)
        } else {
            let p = self.b.ins().fmul(a, b);
            self.b.ins().fadd(p, c)
        }
    }
    /// Sum of the four lanes, in a fixed order.
    pub fn hsum(&mut self, v: Value) -> Value {
        let l: Vec<Value> = (0..4).map(|i| self.b.ins().extractlane(v, i)).collect();
        let a = self.b.ins().fadd(l[0], l[2]);
        let b = self.b.ins().fadd(l[1], l[3]);
        self.b.ins().fadd(a, b)
    }
    pub fn hmax(&mut self, v: Value) -> Value {
        let l: Vec<Value> = (0..4).map(|i| self.b.ins().extractlane(v, i)).collect();
        let a = self.b.ins().fmax(l[0], l[2]);
        let b = self.b.ins().fmax(l[1], l[3]);
        self.b.ins().fmax(a, b)
    }
    pub fn bitcast_f(&mut self, v: Value) -> Value {
        self.b.ins().bitcast(
            F32X4,
            MemFlagsData::new().with_endianness(Endianness::Little),
            v,
        )
    }
    pub fn bitcast_i(&mut self, v: Value) -> Value {
        self.b.ins().bitcast(
            I32X4,
            MemFlagsData::new().with_endianness(Endianness::Little),
            v,
        )
    }
    /// Lane-wise `if cond { a } else { b }` for f32x4 with an f32x4 comparison.
    pub fn fselect(&mut self, cc: FloatCC, x: Value, y: Value, a: Value, b: Value) -> Value {
        let m = self.b.ins().fcmp(cc, x, y);
        let m = self.bitcast_f(m);
        self.b.ins().bitselect(m, a, b)
    }

    /// `for i in (start..end).step_by(step)` with the test at the top, `i` signed.
    pub fn for_range(
        &mut self,
        start: Value,
        end: Value,
        step: i64,
        mut body: impl FnMut(&mut Self, Value),
    ) {
        let header = self.b.create_block();
        let inner = self.b.create_block();
        let exit = self.b.create_block();
        let iv = self.b.append_block_param(header, I64);
        self.b.ins().jump(header, &[start.into()]);
        self.b.switch_to_block(header);
        let go = self.b.ins().icmp(IntCC::SignedLessThan, iv, end);
        self.b.ins().brif(go, inner, &[], exit, &[]);
        self.b.switch_to_block(inner);
        body(self, iv);
        let next = self.b.ins().iadd_imm_s(iv, step);
        self.b.ins().jump(header, &[next.into()]);
        self.b.switch_to_block(exit);
    }

    pub fn for_n(&mut self, n: Value, body: impl FnMut(&mut Self, Value)) {
        let z = self.i(0);
        self.for_range(z, n, 1, body)
    }

    /// Runs `body` when the i8 condition `c` holds.
    pub fn when(&mut self, c: Value, body: impl FnOnce(&mut Self)) {
        let then = self.b.create_block();
        let join = self.b.create_block();
        self.b.ins().brif(c, then, &[], join, &[]);
        self.b.switch_to_block(then);
        body(self);
        self.b.ins().jump(join, &[]);
        self.b.switch_to_block(join);
    }

    /// Applies `f` to every element of `n` f32s at `src`, writing to `dst` (may equal `src`):
    /// four lanes at a time, then the tail through the same vector code on a splat.
    pub fn map_f32(
        &mut self,
        src: Value,
        dst: Value,
        n: Value,
        mut f: impl FnMut(&mut Self, Value) -> Value,
    ) {
        let n4 = self.b.ins().band_imm_s(n, !3);
        let z = self.i(0);
        self.for_range(z, n4, 4, |k, i| {
            let s = k.at(src, i, 4);
            let d = k.at(dst, i, 4);
            let x = k.ldv(s, 0);
            let y = f(k, x);
            k.st(y, d, 0);
        });
        self.for_range(n4, n, 1, |k, i| {
            let s = k.at(src, i, 4);
            let d = k.at(dst, i, 4);
            let x = k.ldf(s, 0);
            let x = k.b.ins().splat(F32X4, x);
            let y = f(k, x);
            let y = k.b.ins().extractlane(y, 0);
            k.st(y, d, 0);
        });
    }

    /// Copies `n` f32s (or, with `n` doubled, i64s) from `src` to `dst`.
    pub fn copy_f32(&mut self, src: Value, dst: Value, n: Value) {
        self.map_f32(src, dst, n, |_, x| x);
    }

    /// Sets `n` f32s at `dst` to `v`.
    pub fn fill_f32(&mut self, dst: Value, n: Value, v: f32) {
        let vv = self.splat(v);
        let n4 = self.b.ins().band_imm_s(n, !3);
        let z = self.i(0);
        self.for_range(z, n4, 4, |k, i| {
            let d = k.at(dst, i, 4);
            k.st(vv, d, 0);
        });
        let s = self.f(v);
        self.for_range(n4, n, 1, |k, i| {
            let d = k.at(dst, i, 4);
            k.st(s, d, 0);
        });
    }

    /// Folds `n` f32s at `p` into the f32x4 `init` with `f(acc, x)`, four at a time; each tail
    /// element comes as a vector of `neutral` with the element in lane 0.
    pub fn reduce_f32(
        &mut self,
        p: Value,
        n: Value,
        init: Value,
        neutral: f32,
        mut f: impl FnMut(&mut Self, Value, Value) -> Value,
    ) -> Value {
        let acc = self.b.declare_var(F32X4);
        self.b.def_var(acc, init);
        let n4 = self.b.ins().band_imm_s(n, !3);
        let z = self.i(0);
        self.for_range(z, n4, 4, |k, i| {
            let a = k.at(p, i, 4);
            let x = k.ldv(a, 0);
            let cur = k.b.use_var(acc);
            let nv = f(k, cur, x);
            k.b.def_var(acc, nv);
        });
        self.for_range(n4, n, 1, |k, i| {
            let a = k.at(p, i, 4);
            let x = k.ldf(a, 0);
            let fill = k.splat(neutral);
            let x = k.b.ins().insertlane(fill, x, 0);
            let cur = k.b.use_var(acc);
            let nv = f(k, cur, x);
            k.b.def_var(acc, nv);
        });
        self.b.use_var(acc)
    }
}
