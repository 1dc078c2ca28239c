/* The vector index's compact copy: each float32 row also kept as int8 codes
 * with a per-row scale and a bound on its quantisation error, scanned with
 * SIMD to find the few rows that can be the answer, which are then
 * re-ranked exactly against the float32 rows. Pure computation on memory
 * the caller owns and locks; it must never drop a row that can win.
 *
 * Why the answer cannot change. For query x and row r (both float32, unit
 * norm up to rounding) with int8 approximations xh = sx*p and rh = sr*c:
 *   <x,r> - <xh,rh> = <x, r-rh> + <x-xh, rh>
 * so by Cauchy-Schwarz
 *   |<x,r> - <xh,rh>| <= |x|*|r-rh| + |x-xh|*|rh|
 *                     <= (|x| + ex)*er + ex*(1 + 2^-22)
 * with er >= |r-rh| stored per row, ex >= |x-xh| computed per query and
 * |rh| <= |r| + er, |r| <= 1 + 2^-23 (each component of the normalised row
 * was rounded to float once). <p,c> is an exact integer; the float
 * arithmetic turning it into approx, upper and lower bounds adds at most
 * 8u(Amax + Bmax) (u = 2^-24, Amax >= |<xh,rh>|, Bmax >= the bound), and
 * the exact re-rank's double sum differs from the real <x,r> by at most
 * d*2^-53 < 1e-12. All of that is folded into beta. A row is dropped only
 * when its upper bound is below a lower bound of some live row, below the
 * best exact similarity found, or below the caller's minimum. */
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define VQ_X86 1
#else
#define VQ_X86 0
#endif

#include "vindex_priv.h"

/* Round to a float not below v. */
static float f_up(double v)
{
	float f = (float)v;
	if ((double)f < v)
		f = nextafterf(f, INFINITY);
	return f;
}

/* Relative slack for a norm computed in double over <= 8192 terms: the
 * true error is below (d + 3) * 2^-53 ~ 1e-12. */
#define NORM_SLACK (1.0 + 1e-9)

size_t vq_stride(int dim)
{
	size_t d = (size_t)dim;
	return (d + VQ_ALIGN - 1) / VQ_ALIGN * VQ_ALIGN;
}

/* Shared by rows and queries: codes = round(v / scale), clamped to +-127,
 * scale = max|v| / 127; returns an upper bound of |v - scale * codes|. */
static double quantise(const float *v, int dim, size_t stride, int8_t *codes,
                       float *scale)
{
	float m = 0;
	for (int j = 0; j < dim; j++)
		if (fabsf(v[j]) > m)
			m = fabsf(v[j]);
	float s = m > 0 ? m / 127.0f : 1.0f;
	if (!(s > 0)) /* m below 127 * FLT_TRUE_MIN: underflowed */
		s = FLT_TRUE_MIN;
	double e2 = 0;
	for (int j = 0; j < dim; j++) {
		long c = lrintf(v[j] / s);
		if (c > 127)
			c = 127;
		if (c < -127)
			c = -127;
		codes[j] = (int8_t)c;
		double diff = (double)v[j] - (double)s * (double)c; /* s*c is exact */
		e2 += diff * diff;
	}
	memset(codes + dim, 0, stride - (size_t)dim);
	*scale = s;
	return sqrt(e2) * NORM_SLACK;
}

void vq_encode(const float *r, int dim, size_t stride, int8_t *codes, float *scale,
               float *err)
{
	*err = f_up(quantise(r, dim, stride, codes, scale));
}

void vq_query_init(struct vq_query *q, const float *x, int dim, size_t stride,
                   int8_t *codes, uint8_t *absc, double bound_scale)
{
	float s;
	double ex = quantise(x, dim, stride, codes, &s);
	double xx = 0;
	int32_t sum = 0;
	for (int j = 0; j < dim; j++)
		xx += (double)x[j] * x[j];
	for (size_t j = 0; j < stride; j++) {
		sum += codes[j];
		absc[j] = (uint8_t)(codes[j] < 0 ? -codes[j] : codes[j]);
	}
	double xn = sqrt(xx) * NORM_SLACK;
	double rmax = 1.0 + 0x1p-22;
	/* Largest possible row error: every component off by at most half a
	 * step (plus rounding), the step at most (1 + 2^-22) / 127. */
	double emax = sqrt((double)dim) * 0.004;
	double alpha = xn + ex;
	double beta = ex * rmax;
	double amax = (xn + ex) * (rmax + emax);
	double bmax = alpha * emax + beta;
	beta += 8.0 * 0x1p-24 * (amax + bmax) + 1e-12;
	q->x = x;
	q->codes = codes;
	q->absc = absc;
	q->sum = sum;
	q->scale = s;
	q->alpha = f_up(alpha * bound_scale);
	q->beta = f_up(beta * bound_scale);
}

double vq_dot_exact(const float *a, const float *b, int dim)
{
	double s[8] = { 0 };
	int j = 0;
	for (; j + 8 <= dim; j += 8)
		for (int k = 0; k < 8; k++)
			s[k] += (double)a[j + k] * (double)b[j + k];
	for (; j < dim; j++)
		s[j & 7] += (double)a[j] * (double)b[j];
	return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

void vq_state_init(struct vq_state *st, float min_similarity, struct vq_cand *buf,
                   size_t cap)
{
	st->floor = min_similarity > -1.0f ? min_similarity : -INFINITY;
	st->best = -INFINITY;
	st->best_row = SIZE_MAX;
	st->cand = buf;
	st->ncand = 0;
	st->cap = cap;
	st->taken = 0;
	st->reranked = 0;
}

/* ---- candidates ---- */

static void rerank(const struct vq_rows *R, const struct vq_query *q,
                   struct vq_state *st, size_t row)
{
	double d = vq_dot_exact(q->x, R->mat + row * (size_t)R->dim, R->dim);
	st->reranked++;
	if (st->best_row == SIZE_MAX || d > st->best || (d == st->best && row < st->best_row)) {
		st->best = d;
		st->best_row = row;
		/* A float upper bound u >= best implies u >= (float)best, so this
		 * floor never drops a row that could tie. */
		if ((float)d > st->floor)
			st->floor = (float)d;
	}
}

/* The buffer is full: drop what the risen floor rules out; if that frees
 * too little, re-rank everything in it. */
static void flush(const struct vq_rows *R, const struct vq_query *q, struct vq_state *st)
{
	size_t k = 0;
	for (size_t i = 0; i < st->ncand; i++)
		if (st->cand[i].upper >= st->floor)
			st->cand[k++] = st->cand[i];
	st->ncand = k;
	if (k <= st->cap / 2)
		return;
	for (size_t i = 0; i < k; i++)
		if (st->cand[i].upper >= st->floor)
			rerank(R, q, st, st->cand[i].row);
	st->ncand = 0;
}

static bool live(int64_t expires, int64_t now_ms)
{
	return expires == 0 || expires > now_ms;
}

/* Row passed the upper-bound test against the floor of the moment. */
static void take(const struct vq_rows *R, const struct vq_query *q, struct vq_state *st,
                 size_t row, int32_t dot, float upper, int64_t now_ms)
{
	if (!live(R->exp[row], now_ms))
		return;
	float a = (q->scale * R->scale[row]) * (float)dot;
	float lower = a - (q->alpha * R->err[row] + q->beta);
	if (lower > st->floor)
		st->floor = lower;
	st->taken++;
	if (st->ncand == st->cap)
		flush(R, q, st);
	if (upper >= st->floor)
		st->cand[st->ncand++] = (struct vq_cand){ .row = (uint32_t)row, .upper = upper };
}

static float upper_scalar(const struct vq_rows *R, const struct vq_query *q, size_t row,
                          int32_t dot)
{
	return (q->scale * R->scale[row]) * (float)dot + (q->alpha * R->err[row] + q->beta);
}

static int32_t dot_scalar(const int8_t *a, const int8_t *b, size_t stride)
{
	int32_t s = 0;
	for (size_t j = 0; j < stride; j++)
		s += (int32_t)a[j] * (int32_t)b[j];
	return s;
}

static void scan_scalar(const struct vq_rows *R, const struct vq_query *q,
                        struct vq_state *st, size_t r0, size_t r1, int64_t now_ms)
{
	for (size_t r = r0; r < r1; r++) {
		int32_t dot = dot_scalar(R->codes + r * R->stride, q->codes, R->stride);
		float u = upper_scalar(R, q, r, dot);
		if (u >= st->floor)
			take(R, q, st, r, dot, u, now_ms);
	}
}

/* ---- x86 kernels ---- */

#if VQ_X86

#define TGT_AVX2 __attribute__((target("avx2,fma")))
#define TGT_VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

TGT_AVX2 static inline int32_t hsum_epi32(__m256i v)
{
	__m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
	return _mm_cvtsi128_si32(s);
}

/* Eight per-row accumulators to eight row sums, in row order. */
TGT_AVX2 static inline __m256i reduce8(__m256i a0, __m256i a1, __m256i a2, __m256i a3,
                                       __m256i a4, __m256i a5, __m256i a6, __m256i a7)
{
	__m256i x = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
	__m256i y = _mm256_hadd_epi32(_mm256_hadd_epi32(a4, a5), _mm256_hadd_epi32(a6, a7));
	return _mm256_add_epi32(_mm256_permute2x128_si256(x, y, 0x20),
	                        _mm256_permute2x128_si256(x, y, 0x31));
}

/* Upper bounds of rows r..r+7 from their dot products; rows that reach the
 * floor go to take(), which may raise it. */
TGT_AVX2 static inline void filter8(const struct vq_rows *R, const struct vq_query *q,
                                    struct vq_state *st, size_t r, __m256i dots,
                                    int64_t now_ms)
{
	__m256 m = _mm256_mul_ps(_mm256_set1_ps(q->scale), _mm256_loadu_ps(R->scale + r));
	__m256 b = _mm256_fmadd_ps(_mm256_set1_ps(q->alpha), _mm256_loadu_ps(R->err + r),
	                           _mm256_set1_ps(q->beta));
	__m256 u = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), m, b);
	int mask = _mm256_movemask_ps(_mm256_cmp_ps(u, _mm256_set1_ps(st->floor), _CMP_GE_OQ));
	if (!mask)
		return;
	float uu[8];
	int32_t dd[8];
	_mm256_storeu_ps(uu, u);
	_mm256_storeu_si256((__m256i *)dd, dots);
	for (int k = 0; k < 8; k++)
		if ((mask >> k & 1) && uu[k] >= st->floor)
			take(R, q, st, r + (size_t)k, dd[k], uu[k], now_ms);
}

/* |q| * (r * sign(q)) = q * r, pairs summed to int16 (|q|, |r| <= 127, so
 * no saturation), then to int32. */
TGT_AVX2 static inline __m256i dot_avx2(const int8_t *row, const struct vq_query *q,
                                        size_t stride)
{
	const __m256i ones = _mm256_set1_epi16(1);
	__m256i a = _mm256_setzero_si256(), b = _mm256_setzero_si256();
	size_t j = 0;
	for (; j + 64 <= stride; j += 64) {
		__m256i r0 = _mm256_load_si256((const __m256i *)(row + j));
		__m256i r1 = _mm256_load_si256((const __m256i *)(row + j + 32));
		__m256i s0 = _mm256_sign_epi8(r0, _mm256_load_si256((const __m256i *)(q->codes + j)));
		__m256i s1 = _mm256_sign_epi8(r1, _mm256_load_si256((const __m256i *)(q->codes + j + 32)));
		a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(
			_mm256_load_si256((const __m256i *)(q->absc + j)), s0), ones));
		b = _mm256_add_epi32(b, _mm256_madd_epi16(_mm256_maddubs_epi16(
			_mm256_load_si256((const __m256i *)(q->absc + j + 32)), s1), ones));
	}
	return _mm256_add_epi32(a, b);
}

TGT_AVX2 static void scan_avx2(const struct vq_rows *R, const struct vq_query *q,
                               struct vq_state *st, size_t r0, size_t r1, int64_t now_ms)
{
	size_t s = R->stride, r = r0;
	for (; r + 8 <= r1; r += 8) {
		/* Row after row, in ascending order, so the hardware prefetcher
		 * sees one forward stream: as arguments of one call the eight
		 * dots would be evaluated in unspecified order (GCC goes right to
		 * left, reading each block backwards at a third of the speed);
		 * separate declarations are sequenced. */
		const int8_t *b = R->codes + r * s;
		__m256i d0 = dot_avx2(b, q, s);
		__m256i d1 = dot_avx2(b + s, q, s);
		__m256i d2 = dot_avx2(b + 2 * s, q, s);
		__m256i d3 = dot_avx2(b + 3 * s, q, s);
		__m256i d4 = dot_avx2(b + 4 * s, q, s);
		__m256i d5 = dot_avx2(b + 5 * s, q, s);
		__m256i d6 = dot_avx2(b + 6 * s, q, s);
		__m256i d7 = dot_avx2(b + 7 * s, q, s);
		filter8(R, q, st, r, reduce8(d0, d1, d2, d3, d4, d5, d6, d7), now_ms);
	}
	for (; r < r1; r++) {
		int32_t dot = hsum_epi32(dot_avx2(R->codes + r * s, q, s));
		float u = upper_scalar(R, q, r, dot);
		if (u >= st->floor)
			take(R, q, st, r, dot, u, now_ms);
	}
}

/* (r + 128) as u8 times q as s8, four products at a time into int32:
 * sum = <r, q> + 128 * sum(q). Returns eight partial sums. */
TGT_VNNI static inline __m256i dot_vnni(const int8_t *row, const int8_t *qc, size_t stride)
{
	const __m512i flip = _mm512_set1_epi8((char)0x80);
	__m512i a = _mm512_setzero_si512();
	for (size_t j = 0; j < stride; j += 64)
		a = _mm512_dpbusd_epi32(a, _mm512_xor_si512(_mm512_load_si512(row + j), flip),
		                        _mm512_load_si512(qc + j));
	return _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
}

TGT_VNNI static void scan_vnni(const struct vq_rows *R, const struct vq_query *q,
                               struct vq_state *st, size_t r0, size_t r1, int64_t now_ms)
{
	size_t s = R->stride, r = r0;
	const __m256i off = _mm256_set1_epi32(128 * q->sum);
	for (; r + 8 <= r1; r += 8) {
		const int8_t *b = R->codes + r * s; /* ascending: see scan_avx2() */
		__m256i d0 = dot_vnni(b, q->codes, s);
		__m256i d1 = dot_vnni(b + s, q->codes, s);
		__m256i d2 = dot_vnni(b + 2 * s, q->codes, s);
		__m256i d3 = dot_vnni(b + 3 * s, q->codes, s);
		__m256i d4 = dot_vnni(b + 4 * s, q->codes, s);
		__m256i d5 = dot_vnni(b + 5 * s, q->codes, s);
		__m256i d6 = dot_vnni(b + 6 * s, q->codes, s);
		__m256i d7 = dot_vnni(b + 7 * s, q->codes, s);
		__m256i d = reduce8(d0, d1, d2, d3, d4, d5, d6, d7);
		filter8(R, q, st, r, _mm256_sub_epi32(d, off), now_ms);
	}
	for (; r < r1; r++) {
		int32_t dot = hsum_epi32(dot_vnni(R->codes + r * s, q->codes, s)) - 128 * q->sum;
		float u = upper_scalar(R, q, r, dot);
		if (u >= st->floor)
			take(R, q, st, r, dot, u, now_ms);
	}
}

#endif /* VQ_X86 */

bool vq_kernel_supported(enum vq_kernel k)
{
	switch (k) {
	case VQ_SCALAR:
		return true;
	case VQ_AVX2:
#if VQ_X86
		return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
		return false;
#endif
	case VQ_VNNI:
#if VQ_X86
		return vq_kernel_supported(VQ_AVX2) && __builtin_cpu_supports("avx512f") &&
		       __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
		       __builtin_cpu_supports("avx512vnni");
#else
		return false;
#endif
	}
	return false;
}

enum vq_kernel vq_kernel_best(void)
{
	if (vq_kernel_supported(VQ_VNNI))
		return VQ_VNNI;
	if (vq_kernel_supported(VQ_AVX2))
		return VQ_AVX2;
	return VQ_SCALAR;
}

void vq_scan(enum vq_kernel k, const struct vq_rows *R, const struct vq_query *q,
             struct vq_state *st, size_t r0, size_t r1, int64_t now_ms)
{
	switch (k) {
	case VQ_AVX2:
#if VQ_X86
		scan_avx2(R, q, st, r0, r1, now_ms);
		return;
#else
		break;
#endif
	case VQ_VNNI:
#if VQ_X86
		scan_vnni(R, q, st, r0, r1, now_ms);
		return;
#else
		break;
#endif
	case VQ_SCALAR:
		break;
	}
	scan_scalar(R, q, st, r0, r1, now_ms);
}

size_t vq_finish(const struct vq_rows *R, const struct vq_query *q,
                 struct vq_state *st, int nst, double *sim)
{
	struct vq_state *m = &st[0];
	for (int i = 1; i < nst; i++) {
		struct vq_state *o = &st[i];
		if (o->floor > m->floor)
			m->floor = o->floor;
		if (o->best_row != SIZE_MAX &&
		    (m->best_row == SIZE_MAX || o->best > m->best ||
		     (o->best == m->best && o->best_row < m->best_row))) {
			m->best = o->best;
			m->best_row = o->best_row;
		}
		m->reranked += o->reranked;
		m->taken += o->taken;
	}
	if (m->best_row != SIZE_MAX && (float)m->best > m->floor)
		m->floor = (float)m->best;
	/* The candidate with the highest upper bound first: usually the
	 * answer, and its exact similarity rules out nearly all the rest. */
	int ti = -1;
	size_t tk = 0;
	float tu = -INFINITY;
	for (int i = 0; i < nst; i++)
		for (size_t k = 0; k < st[i].ncand; k++)
			if (st[i].cand[k].upper >= m->floor && st[i].cand[k].upper > tu) {
				tu = st[i].cand[k].upper;
				ti = i;
				tk = k;
			}
	if (ti >= 0)
		rerank(R, q, m, st[ti].cand[tk].row);
	for (int i = 0; i < nst; i++)
		for (size_t k = 0; k < st[i].ncand; k++)
			if ((i != ti || k != tk) && st[i].cand[k].upper >= m->floor)
				rerank(R, q, m, st[i].cand[k].row);
	*sim = m->best;
	return m->best_row;
}
