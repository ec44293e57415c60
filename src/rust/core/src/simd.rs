//! The widest vector instructions of the CPU, detected once. The hot elementwise loops (the
//! fused likelihoods, the optimiser) are written as plain `#[inline(always)]` Rust that
//! LLVM vectorises; [`widest!`](crate::widest) compiles such a body once per instruction
//! level and runs the widest the CPU has. AVX-512 matters even where its units are 256 bits
//! wide (AMD Zen 4): its 32 registers hold the polynomial constants of ln/exp that AVX2's 16
//! keep reloading (the ZINB pass: 12.3 -> 7.6 ns per element on one Zen 4 core).
//! No level contracts a product and a sum into an FMA on its own (Rust never does), so
//! every level computes the same bits.

/// Instruction sets a body is compiled for, widest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// AVX-512 F/VL/BW/DQ with AVX2 and FMA.
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// The target's baseline (SSE2 on x86_64).
    Baseline,
}

/// The widest level this CPU runs (`RSCVI_SIMD=avx2|baseline` caps it, to compare levels).
pub fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("RSCVI_SIMD").as_deref() {
            Ok("baseline") => Level::Baseline,
            Ok("avx2") => Level::Avx2,
            _ => Level::Avx512,
        };
        let detected = detect();
        if rank(cap) < rank(detected) {
            cap
        } else {
            detected
        }
    })
}

fn rank(l: Level) -> u8 {
    match l {
        Level::Baseline => 0,
        Level::Avx2 => 1,
        Level::Avx512 => 2,
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    use std::arch::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx512vl") && has!("avx512bw") && has!("avx512dq") && has!("fma") {
        Level::Avx512
    } else if has!("avx2") && has!("fma") {
        Level::Avx2
    } else {
        Level::Baseline
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Baseline
}

/// `widest!(fn name<const G: bool>(a: A, b: B) -> R = body);` defines `name`, which calls
/// `body` (an `#[inline(always)]` function of the same signature) compiled for the widest
/// [`Level`](crate::simd::Level) of this CPU.
#[macro_export]
macro_rules! widest {
    (
        $vis:vis fn $name:ident $(<$(const $g:ident: $gt:ty),+>)?
        ($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? = $($body:ident)::+;
    ) => {
        $vis fn $name $(<$(const $g: $gt),+>)? ($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                unsafe fn avx512 $(<$(const $g: $gt),+>)? ($($a: $t),*) $(-> $r)? {
                    $($body)::+ $(::<$($g),+>)? ($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2 $(<$(const $g: $gt),+>)? ($($a: $t),*) $(-> $r)? {
                    $($body)::+ $(::<$($g),+>)? ($($a),*)
                }
                match $crate::simd::level() {
                    // SAFETY: level() found the features the function was compiled for.
                    $crate::simd::Level::Avx512 => {
                        return unsafe { avx512 $(::<$($g),+>)? ($($a),*) }
                    }
                    // SAFETY: as above.
                    $crate::simd::Level::Avx2 => {
                        return unsafe { avx2 $(::<$($g),+>)? ($($a),*) }
                    }
                    $crate::simd::Level::Baseline => {}
                }
            }
            $($body)::+ $(::<$($g),+>)? ($($a),*)
        }
    };
}

#[cfg(test)]
mod tests {
    #[inline(always)]
    fn scaled_sum<const DOUBLE: bool>(v: &[f32]) -> f32 {
        let s: f32 = v.iter().map(|x| x * 3.0).sum();
        if DOUBLE {
            2.0 * s
        } else {
            s
        }
    }

    crate::widest! {
        fn scaled_sum_widest<const DOUBLE: bool>(v: &[f32]) -> f32 = scaled_sum;
    }

    #[test]
    fn every_level_computes_what_the_body_computes() {
        let v: Vec<f32> = (0..1001).map(|i| (i as f32 * 0.37).sin()).collect();
        assert_eq!(scaled_sum_widest::<true>(&v), scaled_sum::<true>(&v));
        assert_eq!(scaled_sum_widest::<false>(&v), scaled_sum::<false>(&v));
    }
}
