/* Embedding providers. The OpenAI-compatible one goes through upstream.h
 * (the one libcurl wrapper) with its own target, key and timeouts; the
 * local one never touches the network. Neither logs the text or a key. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "semgate/core/clock.h"
#include "semgate/embed/embed.h"
#include "semgate/embed/local.h"
#include "semgate/core/json.h"
#include "semgate/core/metrics.h"

#define EMBED_DIM_MAX 8192

void embedder_init(struct embedder *em, const struct sg_config *cfg)
{
	memset(em, 0, sizeof(*em));
	em->local = cfg->embed_url[0] == '\0';
	em->local_dim = (int)cfg->embed_dim;
	em->model = em->local ? SG_EMBED_LOCAL_MODEL : cfg->embed_model;
	em->target = (struct upstream_target){
		.base_url = cfg->embed_url,
		.api_key = cfg->embed_api_key,
		.connect_timeout_ms = cfg->embed_timeout_ms,
		.timeout_ms = cfg->embed_timeout_ms,
		.max_bytes = 64u << 20,
		.kind = UPSTREAM_KIND_EMBEDDING,
	};
}

static enum sg_err parse_vector(const struct upstream_resp *r, float **out, int *dim,
				struct sg_error *e)
{
	cJSON *doc = NULL;
	if (sg_json_parse(r->body.data ? r->body.data : "", r->body.len, &doc, NULL) != SG_OK)
		return sg_error_set(e, SG_ERR_UPSTREAM, "embedding API answered invalid JSON");
	enum sg_err rc = SG_OK;
	const cJSON *item = cJSON_GetArrayItem(sg_json_arr(doc, "data"), 0);
	const cJSON *vec = sg_json_arr(item, "embedding");
	int n = cJSON_GetArraySize(vec);
	if (!vec || n < 1 || n > EMBED_DIM_MAX) {
		rc = sg_error_set(e, SG_ERR_UPSTREAM,
			"embedding API answered no usable vector (dimension %d)", n);
		goto out;
	}
	float *v = malloc(sizeof(float) * (size_t)n);
	if (!v) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	int i = 0;
	const cJSON *x;
	cJSON_ArrayForEach(x, vec) {
		/* beyond FLT_MAX the conversion to float is undefined */
		if (!cJSON_IsNumber(x) || !isfinite(x->valuedouble) ||
		    fabs(x->valuedouble) > FLT_MAX) {
			free(v);
			rc = sg_error_set(e, SG_ERR_UPSTREAM, "embedding has a non-numeric component");
			goto out;
		}
		v[i++] = (float)x->valuedouble;
	}
	*out = v;
	*dim = n;
out:
	cJSON_Delete(doc);
	return rc;
}

enum sg_err embedder_embed(const struct embedder *em, struct upstream *up,
			   const char *text, size_t len, float **out, int *dim,
			   struct sg_error *e)
{
	*out = NULL;
	*dim = 0;
	if (em->local) {
		float *v = malloc(sizeof(float) * (size_t)em->local_dim);
		if (!v)
			return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		double t0 = sg_now_ms();
		embed_local(text, len, v, em->local_dim);
		metrics_observe(SG_H_EMBED, sg_now_ms() - t0);
		*out = v;
		*dim = em->local_dim;
		return SG_OK;
	}
	cJSON *req = cJSON_CreateObject();
	char *body = NULL;
	if (req && cJSON_AddStringToObject(req, "model", em->model) &&
	    cJSON_AddItemToObject(req, "input", cJSON_CreateStringReference(text)))
		body = cJSON_PrintUnformatted(req);
	cJSON_Delete(req);
	if (!body)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	struct upstream_resp r = { 0 };
	enum sg_err rc = upstream_post(up, &em->target, "/embeddings", body, strlen(body),
				       NULL, &r, e);
	free(body);
	if (rc == SG_OK && r.status != 200)
		rc = sg_error_set(e, SG_ERR_UPSTREAM, "embedding API answered HTTP %ld", r.status);
	if (rc == SG_OK)
		rc = parse_vector(&r, out, dim, e);
	upstream_resp_finish(&r);
	return rc;
}
