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
 * d*2^-53 < 1e-12. All of that is folded into beta.
 * The first pass reads only the high nibbles H of c + 128 = 16H + L, so it
 * knows <p,c> = 16<p,H> - 120.5*sum(p) + <p, L - 7.5> only up to the last
 * term, which Cauchy-Schwarz bounds by |p| * |L - 7.5| (lam = sr*|L - 7.5|
 * is stored per row): the H bounds are wider by sx*|p|*lam.
 * A row is dropped only when its upper bound is below a lower bound of some
 * live row, below the best exact similarity found, or below the caller's
 * minimum. */
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

#include "priv.h"

_Static_assert(VQ_DIM_MAX % 128 == 0, "a row's codes fill whole plane groups");

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
/* Dimensions per 64-byte group of a plane. */
#define GROUP 128

size_t vq_query_bytes(int dim)
{
	return ((size_t)dim + GROUP - 1) / GROUP * GROUP;
}

size_t vq_plane(int dim)
{
	return vq_query_bytes(dim) / 2;
}

/* Shared by rows and queries: codes = round(v / scale), clamped to +-127,
 * scale = max|v| / 127, zero padding up to vq_query_bytes(dim); returns an
 * upper bound of |v - scale * codes|. */
static double quantise(const float *v, int dim, int8_t *codes, float *scale)
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
	memset(codes + dim, 0, vq_query_bytes(dim) - (size_t)dim);
	*scale = s;
	return sqrt(e2) * NORM_SLACK;
}

void vq_encode(const float *r, int dim, uint8_t *hi, uint8_t *lo, float *scale,
               float *err, float *lam)
{
	int8_t codes[VQ_DIM_MAX]; /* the longest row's codes */
	size_t plane = vq_plane(dim);
	*err = f_up(quantise(r, dim, codes, scale));
	double l2 = 0;
	for (size_t g = 0; g < plane; g += GROUP / 2) {
		for (size_t k = 0; k < GROUP / 2; k++) {
			unsigned a = (unsigned)(codes[2 * g + k] + 128);
			unsigned b = (unsigned)(codes[2 * g + GROUP / 2 + k] + 128);
			hi[g + k] = (uint8_t)((a >> 4) | (b >> 4) << 4);
			lo[g + k] = (uint8_t)((a & 15) | (b & 15) << 4);
		}
	}
	for (int j = 0; j < dim; j++) {
		double d = (double)((codes[j] + 128) & 15) - 7.5;
		l2 += d * d;
	}
	*lam = f_up((double)*scale * sqrt(l2) * NORM_SLACK);
}

void vq_query_init(struct vq_query *q, const float *x, int dim, int8_t *codes,
                   double bound_scale)
{
	float s;
	double ex = quantise(x, dim, codes, &s);
	double xx = 0, pp = 0;
	int32_t sum = 0;
	for (int j = 0; j < dim; j++) {
		xx += (double)x[j] * x[j];
		pp += (double)codes[j] * codes[j];
		sum += codes[j];
	}
	double xn = sqrt(xx) * NORM_SLACK;
	double rmax = 1.0 + 0x1p-22;
	/* Largest possible row error: every component off by at most half a
	 * step (plus rounding), the step at most (1 + 2^-22) / 127; and the
	 * largest lam: |L - 7.5| <= 7.5 per component. */
	double emax = sqrt((double)dim) * 0.004;
	double lmax = sqrt((double)dim) * 7.5 * 0.0079;
	double gamma = (double)s * sqrt(pp) * NORM_SLACK;
	double alpha = xn + ex;
	double beta = ex * rmax;
	double amax = (xn + ex) * (rmax + emax);
	double bmax = alpha * emax + beta;
	double u8 = 8.0 * 0x1p-24;
	q->x = x;
	q->codes = codes;
	q->sum = sum;
	q->scale = s;
	q->alpha = f_up(alpha * bound_scale);
	q->beta = f_up((beta + u8 * (amax + bmax) + 1e-12) * bound_scale);
	q->gamma = f_up(gamma * bound_scale);
	q->beta_h = f_up((beta + u8 * (amax + bmax + 2 * gamma * lmax) + 1e-12) * bound_scale);
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
	st->refined = 0;
	st->taken = 0;
	st->reranked = 0;
}

/* ---- candidates ---- */

static void rerank(const struct vq_rows *R, const struct vq_query *q,
                   struct vq_state *st, size_t row)
{
	if (R->map)
		row = R->map[row];
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

/* The approximate score from the H plane alone (dh = <codes, H>) and how
 * far it can be from the exact similarity. */
static float hi_approx(const struct vq_rows *R, const struct vq_query *q, size_t row,
                       int32_t dh)
{
	return (0.5f * q->scale * R->scale[row]) * (float)(32 * dh - 241 * q->sum);
}

static float hi_bound(const struct vq_rows *R, const struct vq_query *q, size_t row)
{
	return q->gamma * R->lam[row] + (q->alpha * R->err[row] + q->beta_h);
}

/* Pass 1: a live row's lower bound raises the floor. */
static void lower_hi(const struct vq_rows *R, struct vq_state *st, size_t row, float lower,
                     int64_t now_ms)
{
	if (lower > st->floor && live(R->exp[row], now_ms))
		st->floor = lower;
}

/* Pass 2: the row's L plane is read; its int8 dot goes on as in vq_scan. */
static void refine(const struct vq_rows *R, const struct vq_query *q, struct vq_state *st,
                   size_t row, int32_t dh, int32_t dl, int64_t now_ms)
{
	int32_t dot = 16 * dh + dl - 128 * q->sum;
	float u = upper_scalar(R, q, row, dot);
	st->refined++;
	if (u >= st->floor)
		take(R, q, st, row, dot, u, now_ms);
}

/* <p, one plane row's nibbles> (see vq_plane for the layout). */
static int32_t pdot_scalar(const uint8_t *row, const int8_t *p, size_t plane)
{
	int32_t s = 0;
	for (size_t g = 0; g < plane; g += GROUP / 2)
		for (size_t k = 0; k < GROUP / 2; k++)
			s += (int32_t)(row[g + k] & 15) * p[2 * g + k] +
			     (int32_t)(row[g + k] >> 4) * p[2 * g + GROUP / 2 + k];
	return s;
}

static void scan_full_scalar(const struct vq_rows *R, const struct vq_query *q,
                             struct vq_state *st, size_t r0, size_t r1, int64_t now_ms)
{
	size_t pl = R->plane;
	for (size_t r = r0; r < r1; r++) {
		int32_t dot = 16 * pdot_scalar(R->hi + r * pl, q->codes, pl) +
		              pdot_scalar(R->lo + r * pl, q->codes, pl) - 128 * q->sum;
		float u = upper_scalar(R, q, r, dot);
		if (u >= st->floor)
			take(R, q, st, r, dot, u, now_ms);
	}
}

static void scan_hi_scalar(const struct vq_rows *R, const struct vq_query *q,
                           struct vq_state *st, size_t r0, size_t r1, int64_t now_ms,
                           int32_t *dh)
{
	size_t pl = R->plane;
	for (size_t r = r0; r < r1; r++) {
		dh[r] = pdot_scalar(R->hi + r * pl, q->codes, pl);
		lower_hi(R, st, r, hi_approx(R, q, r, dh[r]) - hi_bound(R, q, r), now_ms);
	}
}

static void scan_lo_scalar(const struct vq_rows *R, const struct vq_query *q,
                           struct vq_state *st, size_t r0, size_t r1, int64_t now_ms,
                           const int32_t *dh)
{
	size_t pl = R->plane;
	for (size_t r = r0; r < r1; r++)
		if (hi_approx(R, q, r, dh[r]) + hi_bound(R, q, r) >= st->floor)
			refine(R, q, st, r, dh[r], pdot_scalar(R->lo + r * pl, q->codes, pl), now_ms);
}

static void dots_scalar(const float *m, size_t k, const float *v, int dim, float *out)
{
	for (size_t c = 0; c < k; c++) {
		const float *row = m + c * (size_t)dim;
		float s[8] = { 0 };
		int j = 0;
		for (; j + 8 <= dim; j += 8)
			for (int t = 0; t < 8; t++)
				s[t] += row[j + t] * v[j + t];
		for (; j < dim; j++)
			s[j & 7] += row[j] * v[j];
		out[c] = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
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

/* Upper bounds of rows r..r+7 from their int8 dots; rows that reach the
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
	_mm256_storeu_si256((__m256i *)(void *)dd, dots);
	for (int k = 0; k < 8; k++)
		if ((mask >> k & 1) && uu[k] >= st->floor)
			take(R, q, st, r + (size_t)k, dd[k], uu[k], now_ms);
}

/* The H-plane approximation of rows r..r+7 and its bound (vector forms of
 * hi_approx and hi_bound). */
TGT_AVX2 static inline void hi8(const struct vq_rows *R, const struct vq_query *q, size_t r,
                                __m256i dh, __m256 *a, __m256 *b)
{
	__m256i k2 = _mm256_sub_epi32(_mm256_slli_epi32(dh, 5), _mm256_set1_epi32(241 * q->sum));
	__m256 m = _mm256_mul_ps(_mm256_set1_ps(0.5f * q->scale), _mm256_loadu_ps(R->scale + r));
	*a = _mm256_mul_ps(_mm256_cvtepi32_ps(k2), m);
	*b = _mm256_fmadd_ps(_mm256_set1_ps(q->gamma), _mm256_loadu_ps(R->lam + r),
	                     _mm256_fmadd_ps(_mm256_set1_ps(q->alpha), _mm256_loadu_ps(R->err + r),
	                                     _mm256_set1_ps(q->beta_h)));
}

/* Pass 1 for rows r..r+7: keep dh, raise the floor from lower bounds. */
TGT_AVX2 static inline void lower8_hi(const struct vq_rows *R, const struct vq_query *q,
                                      struct vq_state *st, size_t r, __m256i dh,
                                      int32_t *out, int64_t now_ms)
{
	__m256 a, b;
	_mm256_storeu_si256((__m256i *)(void *)(out + r), dh);
	hi8(R, q, r, dh, &a, &b);
	__m256 l = _mm256_sub_ps(a, b);
	int mask = _mm256_movemask_ps(_mm256_cmp_ps(l, _mm256_set1_ps(st->floor), _CMP_GT_OQ));
	if (!mask)
		return;
	float ll[8];
	_mm256_storeu_ps(ll, l);
	for (int k = 0; k < 8; k++)
		if (mask >> k & 1)
			lower_hi(R, st, r + (size_t)k, ll[k], now_ms);
}

/* Pass 2 for rows r..r+7: which may still reach the floor. */
TGT_AVX2 static inline int upper8_hi(const struct vq_rows *R, const struct vq_query *q,
                                     const struct vq_state *st, size_t r, const int32_t *dh)
{
	__m256 a, b;
	hi8(R, q, r, _mm256_loadu_si256((const __m256i *)(const void *)(dh + r)), &a, &b);
	__m256 u = _mm256_add_ps(a, b);
	return _mm256_movemask_ps(_mm256_cmp_ps(u, _mm256_set1_ps(st->floor), _CMP_GE_OQ));
}

/* <p, one plane row's nibbles>: eight int32 partial sums. maddubs takes
 * u8 x s8 pairs to int16; 4 of them (<= 4 * 2 * 15 * 127) cannot
 * saturate before they are widened. */
TGT_AVX2 static inline __m256i pdot_avx2(const uint8_t *row, const int8_t *p, size_t plane)
{
	const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
	__m256i acc = _mm256_setzero_si256();
	for (size_t g = 0; g < plane; g += GROUP / 2) {
		const int8_t *pg = p + 2 * g;
		__m256i v0 = _mm256_load_si256((const __m256i *)(const void *)(row + g));
		__m256i v1 = _mm256_load_si256((const __m256i *)(const void *)(row + g + 32));
		__m256i s = _mm256_maddubs_epi16(_mm256_and_si256(v0, m4),
		                                 _mm256_load_si256((const __m256i *)(const void *)pg));
		s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_and_si256(v1, m4),
		                     _mm256_load_si256((const __m256i *)(const void *)(pg + 32))));
		s = _mm256_add_epi16(s, _mm256_maddubs_epi16(
			_mm256_and_si256(_mm256_srli_epi16(v0, 4), m4),
			_mm256_load_si256((const __m256i *)(const void *)(pg + 64))));
		s = _mm256_add_epi16(s, _mm256_maddubs_epi16(
			_mm256_and_si256(_mm256_srli_epi16(v1, 4), m4),
			_mm256_load_si256((const __m256i *)(const void *)(pg + 96))));
		acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s, ones));
	}
	return acc;
}

/* The same with VNNI: u8 x s8, four products at a time, into int32. */
TGT_VNNI static inline __m256i pdot_vnni(const uint8_t *row, const int8_t *p, size_t plane)
{
	const __m512i m4 = _mm512_set1_epi8(0x0f);
	__m512i acc = _mm512_setzero_si512();
	for (size_t g = 0; g < plane; g += GROUP / 2) {
		__m512i v = _mm512_load_si512(row + g);
		acc = _mm512_dpbusd_epi32(acc, _mm512_and_si512(v, m4), _mm512_load_si512(p + 2 * g));
		acc = _mm512_dpbusd_epi32(acc, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4),
		                          _mm512_load_si512(p + 2 * g + GROUP / 2));
	}
	return _mm256_add_epi32(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1));
}

/* <v, row c of m> for c < k in float32 with FMA: the lists' centroids. */
TGT_AVX2 static void dots_avx2(const float *m, size_t k, const float *v, int dim, float *out)
{
	for (size_t c = 0; c < k; c++) {
		const float *row = m + c * (size_t)dim;
		__m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
		int j = 0;
		for (; j + 16 <= dim; j += 16) {
			a0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + j), _mm256_loadu_ps(v + j), a0);
			a1 = _mm256_fmadd_ps(_mm256_loadu_ps(row + j + 8),
			                     _mm256_loadu_ps(v + j + 8), a1);
		}
		__m256 a = _mm256_add_ps(a0, a1);
		__m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
		h = _mm_add_ps(h, _mm_movehl_ps(h, h));
		h = _mm_add_ss(h, _mm_movehdup_ps(h));
		float s = _mm_cvtss_f32(h);
		for (; j < dim; j++)
			s += row[j] * v[j];
		out[c] = s;
	}
}

/* The three scans, once per instruction set. Rows are read one after
 * another in ascending order so that the hardware prefetcher sees forward
 * streams: the eight dots are separate declarations because as arguments
 * of one call they would be evaluated in unspecified order (GCC goes right
 * to left, reading every block backwards at a third of the speed). */
#define X86_SCANS(sfx, TGT, PDOT)                                                      \
TGT static inline __m256i dots8_##sfx(const uint8_t *b, const int8_t *p, size_t pl)   \
{                                                                                      \
	__m256i d0 = PDOT(b, p, pl);                                                   \
	__m256i d1 = PDOT(b + pl, p, pl);                                              \
	__m256i d2 = PDOT(b + 2 * pl, p, pl);                                          \
	__m256i d3 = PDOT(b + 3 * pl, p, pl);                                          \
	__m256i d4 = PDOT(b + 4 * pl, p, pl);                                          \
	__m256i d5 = PDOT(b + 5 * pl, p, pl);                                          \
	__m256i d6 = PDOT(b + 6 * pl, p, pl);                                          \
	__m256i d7 = PDOT(b + 7 * pl, p, pl);                                          \
	return reduce8(d0, d1, d2, d3, d4, d5, d6, d7);                                \
}                                                                                      \
                                                                                       \
TGT static void scan_full_##sfx(const struct vq_rows *R, const struct vq_query *q,    \
                                struct vq_state *st, size_t r0, size_t r1,             \
                                int64_t now_ms)                                        \
{                                                                                      \
	size_t pl = R->plane, r = r0;                                                  \
	const __m256i off = _mm256_set1_epi32(128 * q->sum);                           \
	for (; r + 8 <= r1; r += 8) {                                                  \
		__m256i h = dots8_##sfx(R->hi + r * pl, q->codes, pl);                 \
		__m256i l = dots8_##sfx(R->lo + r * pl, q->codes, pl);                 \
		__m256i d = _mm256_sub_epi32(_mm256_add_epi32(_mm256_slli_epi32(h, 4), \
		                                              l), off);                \
		filter8(R, q, st, r, d, now_ms);                                       \
	}                                                                              \
	for (; r < r1; r++) {                                                          \
		int32_t dot = 16 * hsum_epi32(PDOT(R->hi + r * pl, q->codes, pl)) +    \
		              hsum_epi32(PDOT(R->lo + r * pl, q->codes, pl)) -         \
		              128 * q->sum;                                            \
		float u = upper_scalar(R, q, r, dot);                                  \
		if (u >= st->floor)                                                    \
			take(R, q, st, r, dot, u, now_ms);                             \
	}                                                                              \
}                                                                                      \
                                                                                       \
TGT static void scan_hi_##sfx(const struct vq_rows *R, const struct vq_query *q,      \
                              struct vq_state *st, size_t r0, size_t r1,               \
                              int64_t now_ms, int32_t *dh)                             \
{                                                                                      \
	size_t pl = R->plane, r = r0;                                                  \
	for (; r + 8 <= r1; r += 8)                                                    \
		lower8_hi(R, q, st, r, dots8_##sfx(R->hi + r * pl, q->codes, pl), dh,  \
		          now_ms);                                                     \
	for (; r < r1; r++) {                                                          \
		dh[r] = hsum_epi32(PDOT(R->hi + r * pl, q->codes, pl));                \
		lower_hi(R, st, r, hi_approx(R, q, r, dh[r]) - hi_bound(R, q, r),      \
		         now_ms);                                                      \
	}                                                                              \
}                                                                                      \
                                                                                       \
TGT static void scan_lo_##sfx(const struct vq_rows *R, const struct vq_query *q,      \
                              struct vq_state *st, size_t r0, size_t r1,               \
                              int64_t now_ms, const int32_t *dh)                       \
{                                                                                      \
	size_t pl = R->plane, r = r0;                                                  \
	for (; r + 8 <= r1; r += 8) {                                                  \
		int mask = upper8_hi(R, q, st, r, dh);                                 \
		for (; mask; mask &= mask - 1) {                                       \
			size_t i = r + (size_t)__builtin_ctz((unsigned)mask);          \
			if (hi_approx(R, q, i, dh[i]) + hi_bound(R, q, i) >= st->floor) \
				refine(R, q, st, i, dh[i],                             \
				       hsum_epi32(PDOT(R->lo + i * pl, q->codes, pl)), \
				       now_ms);                                        \
		}                                                                      \
	}                                                                              \
	for (; r < r1; r++)                                                            \
		if (hi_approx(R, q, r, dh[r]) + hi_bound(R, q, r) >= st->floor)        \
			refine(R, q, st, r, dh[r],                                     \
			       hsum_epi32(PDOT(R->lo + r * pl, q->codes, pl)), now_ms); \
}

X86_SCANS(avx2, TGT_AVX2, pdot_avx2)
X86_SCANS(vnni, TGT_VNNI, pdot_vnni)

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

/* The kernels of k this build has (a non-x86 build runs scalar only). */
static enum vq_kernel built(enum vq_kernel k)
{
	return VQ_X86 ? k : VQ_SCALAR;
}

void vq_scan(enum vq_kernel k, const struct vq_rows *R, const struct vq_query *q,
             struct vq_state *st, size_t r0, size_t r1, int64_t now_ms)
{
	switch (built(k)) {
#if VQ_X86
	case VQ_AVX2:
		scan_full_avx2(R, q, st, r0, r1, now_ms);
		return;
	case VQ_VNNI:
		scan_full_vnni(R, q, st, r0, r1, now_ms);
		return;
#endif
	default:
		scan_full_scalar(R, q, st, r0, r1, now_ms);
		return;
	}
}

void vq_scan_hi(enum vq_kernel k, const struct vq_rows *R, const struct vq_query *q,
                struct vq_state *st, size_t r0, size_t r1, int64_t now_ms, int32_t *dh)
{
	switch (built(k)) {
#if VQ_X86
	case VQ_AVX2:
		scan_hi_avx2(R, q, st, r0, r1, now_ms, dh);
		return;
	case VQ_VNNI:
		scan_hi_vnni(R, q, st, r0, r1, now_ms, dh);
		return;
#endif
	default:
		scan_hi_scalar(R, q, st, r0, r1, now_ms, dh);
		return;
	}
}

void vq_scan_lo(enum vq_kernel k, const struct vq_rows *R, const struct vq_query *q,
                struct vq_state *st, size_t r0, size_t r1, int64_t now_ms,
                const int32_t *dh)
{
	switch (built(k)) {
#if VQ_X86
	case VQ_AVX2:
		scan_lo_avx2(R, q, st, r0, r1, now_ms, dh);
		return;
	case VQ_VNNI:
		scan_lo_vnni(R, q, st, r0, r1, now_ms, dh);
		return;
#endif
	default:
		scan_lo_scalar(R, q, st, r0, r1, now_ms, dh);
		return;
	}
}

void vq_dots(enum vq_kernel k, const float *m, size_t nrows, const float *v, int dim,
             float *out)
{
	switch (built(k)) {
#if VQ_X86
	case VQ_AVX2:
	case VQ_VNNI:
		dots_avx2(m, nrows, v, dim, out);
		return;
#endif
	default:
		dots_scalar(m, nrows, v, dim, out);
		return;
	}
}

void vq_drain(const struct vq_rows *R, const struct vq_query *q, struct vq_state *st)
{
	size_t top = SIZE_MAX;
	float tu = -INFINITY;
	for (size_t k = 0; k < st->ncand; k++)
		if (st->cand[k].upper >= st->floor && st->cand[k].upper > tu) {
			tu = st->cand[k].upper;
			top = k;
		}
	if (top != SIZE_MAX)
		rerank(R, q, st, st->cand[top].row);
	for (size_t k = 0; k < st->ncand; k++)
		if (k != top && st->cand[k].upper >= st->floor)
			rerank(R, q, st, st->cand[k].row);
	st->ncand = 0;
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
		m->refined += o->refined;
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
