/* Model registry: several engines by name, one active (see exsa.h).
 *
 * One mutex guards two lists:
 *   - entries, in load order: the names the registry answers to. An entry is
 *     LOADING (its name reserved, no engine yet) or READY (engine set; it
 *     counts the holders of that engine);
 *   - drains: engines that left the registry (unloaded, or replaced by a
 *     reload) while requests still held them; the release that drops one's
 *     holders to 0 frees it.
 * Creating and freeing engines takes seconds, so it never happens under the
 * mutex: a load or reload marks its entry busy, drops the lock, creates the
 * engine, then retakes the lock to publish it. An unload that meets a busy
 * entry unlinks it and marks it removed; the busy thread then owns it and
 * frees it (and the engine it made) when it comes back.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "exsa.h"
#include "util/err.h"

#define NAME_CAP sizeof(((exsa_registry_entry *)0)->name)
#define PATH_CAP sizeof(((exsa_registry_entry *)0)->path)

/* exsa_engine_params with its strings owned. */
typedef struct params_copy {
    exsa_engine_params p;
    char *model_path, *chat_template, *name, *draft;
} params_copy;

typedef struct entry {
    struct entry *next;
    char name[NAME_CAP];   /* "" while an unnamed load is in flight */
    char path[PATH_CAP];
    params_copy params;    /* for reload with p NULL */
    exsa_engine *engine;   /* NULL while LOADING */
    int state;             /* EXSA_MODEL_LOADING or EXSA_MODEL_READY */
    int holders;           /* acquires of engine not yet released */
    int busy;              /* a load or reload is creating an engine for it */
    int removed;           /* unlinked while busy: the busy thread frees it */
} entry;

typedef struct drain {
    struct drain *next;
    exsa_engine *engine;
    int holders;
    char name[NAME_CAP];
    char path[PATH_CAP];
} drain;

struct exsa_registry {
    pthread_mutex_t mu;
    entry *entries; /* load order */
    entry *active;  /* READY entry or NULL */
    drain *drains;
};

static void params_free(params_copy *c)
{
    free(c->model_path);
    free(c->chat_template);
    free(c->name);
    free(c->draft);
    memset(c, 0, sizeof *c);
}

/* Deep copy of src; name (if not NULL) replaces src->name. */
static int params_dup(params_copy *dst, const exsa_engine_params *src, const char *name,
                      exsa_err *err)
{
    memset(dst, 0, sizeof *dst);
    dst->p = *src;
    const char *n = name ? name : src->name;
    dst->model_path = strdup(src->model_path);
    dst->chat_template = src->chat_template ? strdup(src->chat_template) : NULL;
    dst->name = n ? strdup(n) : NULL;
    dst->draft = src->draft_model_path ? strdup(src->draft_model_path) : NULL;
    if (!dst->model_path || (src->chat_template && !dst->chat_template) || (n && !dst->name) ||
        (src->draft_model_path && !dst->draft)) {
        params_free(dst);
        return exsa_err_set(err, EXSA_ENOMEM, "registry: out of memory");
    }
    dst->p.model_path = dst->model_path;
    dst->p.chat_template = dst->chat_template;
    dst->p.name = dst->name;
    dst->p.draft_model_path = dst->draft;
    return 0;
}

static void entry_free(entry *en)
{
    if (en) {
        params_free(&en->params);
        free(en);
    }
}

exsa_registry *exsa_registry_create(exsa_err *err)
{
    exsa_registry *r = calloc(1, sizeof *r);
    if (!r) {
        exsa_err_set(err, EXSA_ENOMEM, "registry: out of memory");
        return NULL;
    }
    if (pthread_mutex_init(&r->mu, NULL) != 0) {
        free(r);
        exsa_err_set(err, EXSA_ENOMEM, "registry: cannot create mutex");
        return NULL;
    }
    return r;
}

void exsa_registry_free(exsa_registry *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    entry *en = r->entries;
    drain *d = r->drains;
    r->entries = NULL;
    r->drains = NULL;
    r->active = NULL;
    pthread_mutex_unlock(&r->mu);
    while (en) {
        entry *next = en->next;
        exsa_engine_free(en->engine);
        entry_free(en);
        en = next;
    }
    while (d) {
        drain *next = d->next;
        exsa_engine_free(d->engine);
        free(d);
        d = next;
    }
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* ---- helpers; all called with r->mu held ---- */

static entry *find(exsa_registry *r, const char *name)
{
    for (entry *en = r->entries; en; en = en->next)
        if (en->name[0] && !strcmp(en->name, name))
            return en;
    return NULL;
}

static void append(exsa_registry *r, entry *en)
{
    entry **pp = &r->entries;
    while (*pp)
        pp = &(*pp)->next;
    en->next = NULL;
    *pp = en;
}

/* The first READY entry at or after from in load order, wrapping once. */
static entry *first_ready_from(exsa_registry *r, entry *from)
{
    for (entry *en = from; en; en = en->next)
        if (en->state == EXSA_MODEL_READY)
            return en;
    for (entry *en = r->entries; en && en != from; en = en->next)
        if (en->state == EXSA_MODEL_READY)
            return en;
    return NULL;
}

/* Unlinks en; if it was active, the next ready model in load order (after
 * it, else before it) takes over. */
static void unlink_entry(exsa_registry *r, entry *en)
{
    entry *after = en->next;
    for (entry **pp = &r->entries; *pp; pp = &(*pp)->next)
        if (*pp == en) {
            *pp = en->next;
            break;
        }
    en->next = NULL;
    if (r->active == en)
        r->active = first_ready_from(r, after);
}

/* Takes en's engine out of service: into the drains (using the caller's
 * preallocated record d) if held, else returned for the caller to free once
 * the lock is dropped. Sets *d_used when d was consumed. */
static exsa_engine *retire_engine(exsa_registry *r, entry *en, drain *d, int *d_used)
{
    exsa_engine *e = en->engine;
    int holders = en->holders;
    en->engine = NULL;
    en->holders = 0;
    if (!e || holders == 0)
        return e;
    d->engine = e;
    d->holders = holders;
    memcpy(d->name, en->name, sizeof d->name);
    memcpy(d->path, en->path, sizeof d->path);
    d->next = r->drains;
    r->drains = d;
    *d_used = 1;
    return NULL;
}

static void set_path(entry *en, exsa_engine *e)
{
    exsa_model_info info;
    exsa_engine_model_info(e, &info);
    memcpy(en->path, info.path, sizeof en->path);
    en->path[sizeof en->path - 1] = '\0';
}

/* ---- API ---- */

/* The whole file name if taking ".gguf" away leaves nothing. */
void exsa_registry_default_name(const char *path, char *out, size_t cap)
{
    if (!out || !cap)
        return;
    if (!path) {
        out[0] = '\0';
        return;
    }
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t n = strlen(base);
    if (n > 5 && !strcasecmp(base + n - 5, ".gguf"))
        n -= 5;
    snprintf(out, cap, "%.*s", (int)n, base);
}

int exsa_registry_load(exsa_registry *r, const exsa_engine_params *p, char *name_out,
                       size_t name_cap, exsa_err *err)
{
    if (!r || !p || !p->model_path)
        return exsa_err_set(err, EXSA_EINVAL, "registry: load needs a registry and a model_path");
    char stem[NAME_CAP];
    const char *name = p->name && p->name[0] ? p->name : NULL;
    if (name && strlen(name) >= NAME_CAP)
        return exsa_err_set(err, EXSA_EINVAL, "registry: name of %zu bytes is longer than %zu",
                            strlen(name), NAME_CAP - 1);
    if (!name) {
        exsa_registry_default_name(p->model_path, stem, sizeof stem);
        name = stem;
    }
    entry *en = calloc(1, sizeof *en);
    if (!en)
        return exsa_err_set(err, EXSA_ENOMEM, "registry: out of memory");
    /* The name goes into the kept parameters: later reloads keep it. */
    int rc = params_dup(&en->params, p, name, err);
    if (rc) {
        free(en);
        return rc;
    }
    en->state = EXSA_MODEL_LOADING;
    en->busy = 1;
    snprintf(en->path, sizeof en->path, "%s", p->model_path);

    /* The name is reserved before the slow part, so a second load of the
     * same name fails at once. */
    pthread_mutex_lock(&r->mu);
    entry *dup = find(r, name);
    if (dup) {
        exsa_err_set(err, EXSA_EINVAL,
                     "registry: model '%s' is already loaded from %s; to load %s as well, give "
                     "it another name (--alias on the command line, \"name\" in POST "
                     "/v1/models/load)",
                     name, dup->path, p->model_path);
        pthread_mutex_unlock(&r->mu);
        entry_free(en);
        return EXSA_EINVAL;
    }
    snprintf(en->name, sizeof en->name, "%s", name);
    append(r, en);
    pthread_mutex_unlock(&r->mu);

    exsa_err le = {0};
    exsa_engine *e = exsa_engine_create(&en->params.p, &le);

    pthread_mutex_lock(&r->mu);
    if (!e) {
        if (!en->removed)
            unlink_entry(r, en);
        pthread_mutex_unlock(&r->mu);
        entry_free(en);
        if (err)
            *err = le;
        return le.code ? le.code : EXSA_EIO;
    }
    if (en->removed) {
        pthread_mutex_unlock(&r->mu);
        exsa_engine_free(e);
        exsa_err_set(err, EXSA_EINVAL, "registry: model '%s' was unloaded while loading",
                     en->name);
        entry_free(en);
        return EXSA_EINVAL;
    }
    en->engine = e;
    set_path(en, e);
    en->state = EXSA_MODEL_READY;
    en->busy = 0;
    if (!r->active)
        r->active = en;
    if (name_out && name_cap > 0)
        snprintf(name_out, name_cap, "%s", en->name);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

int exsa_registry_unload(exsa_registry *r, const char *name, exsa_err *err)
{
    if (!r || !name)
        return exsa_err_set(err, EXSA_EINVAL, "registry: unload needs a model name");
    drain *d = calloc(1, sizeof *d); /* no allocation can fail under the lock */
    if (!d)
        return exsa_err_set(err, EXSA_ENOMEM, "registry: out of memory");
    int d_used = 0;
    pthread_mutex_lock(&r->mu);
    entry *en = find(r, name);
    if (!en) {
        pthread_mutex_unlock(&r->mu);
        free(d);
        return exsa_err_set(err, EXSA_EINVAL, "registry: no model named '%.200s'", name);
    }
    unlink_entry(r, en);
    exsa_engine *to_free = retire_engine(r, en, d, &d_used);
    int owned = !en->busy;
    if (en->busy)
        en->removed = 1; /* its loader or reloader frees it */
    pthread_mutex_unlock(&r->mu);
    if (!d_used)
        free(d);
    exsa_engine_free(to_free);
    if (owned)
        entry_free(en);
    return 0;
}

int exsa_registry_reload(exsa_registry *r, const char *name, const exsa_engine_params *p,
                         exsa_err *err)
{
    if (!r || !name)
        return exsa_err_set(err, EXSA_EINVAL, "registry: reload needs a model name");
    if (p && !p->model_path)
        return exsa_err_set(err, EXSA_EINVAL, "registry: reload '%.200s': no model_path", name);
    drain *d = calloc(1, sizeof *d);
    if (!d)
        return exsa_err_set(err, EXSA_ENOMEM, "registry: out of memory");
    pthread_mutex_lock(&r->mu);
    entry *en = find(r, name);
    if (!en || en->busy) {
        if (!en)
            exsa_err_set(err, EXSA_EINVAL, "registry: no model named '%.200s'", name);
        else
            exsa_err_set(err, EXSA_EINVAL, "registry: model '%s' is %s", en->name,
                         en->state == EXSA_MODEL_LOADING ? "still loading" : "already reloading");
        pthread_mutex_unlock(&r->mu);
        free(d);
        return EXSA_EINVAL;
    }
    en->busy = 1; /* from here en stays allocated and its params unchanged */
    pthread_mutex_unlock(&r->mu);

    /* The new engine answers to the same name whatever p says. */
    params_copy np;
    int rc = params_dup(&np, p ? p : &en->params.p, en->name, err);
    exsa_engine *e = NULL;
    if (!rc) {
        exsa_err le = {0};
        e = exsa_engine_create(&np.p, &le);
        if (!e) {
            rc = le.code ? le.code : EXSA_EIO;
            if (err) {
                *err = le;
                exsa_err_prefix(err, "registry: reload '%s'", en->name);
            }
        }
    }

    pthread_mutex_lock(&r->mu);
    en->busy = 0;
    if (en->removed) {
        pthread_mutex_unlock(&r->mu);
        free(d);
        exsa_engine_free(e);
        params_free(&np);
        if (!rc)
            rc = exsa_err_set(err, EXSA_EINVAL,
                              "registry: model '%s' was unloaded while reloading", en->name);
        entry_free(en);
        return rc;
    }
    if (rc) { /* the old engine keeps serving */
        pthread_mutex_unlock(&r->mu);
        free(d);
        params_free(&np);
        return rc;
    }
    int d_used = 0;
    exsa_engine *old = retire_engine(r, en, d, &d_used);
    params_copy oldp = en->params;
    en->params = np;
    en->engine = e;
    set_path(en, e);
    pthread_mutex_unlock(&r->mu);
    if (!d_used)
        free(d);
    exsa_engine_free(old);
    params_free(&oldp);
    return 0;
}

int exsa_registry_set_active(exsa_registry *r, const char *name, exsa_err *err)
{
    if (!r || !name)
        return exsa_err_set(err, EXSA_EINVAL, "registry: set_active needs a model name");
    pthread_mutex_lock(&r->mu);
    entry *en = find(r, name);
    int ok = en && en->state == EXSA_MODEL_READY;
    if (ok)
        r->active = en;
    pthread_mutex_unlock(&r->mu);
    if (!ok)
        return exsa_err_set(err, EXSA_EINVAL, "registry: model '%.200s' is %s", name,
                            en ? "still loading" : "not loaded");
    return 0;
}

exsa_engine *exsa_registry_acquire(exsa_registry *r, const char *name, exsa_err *err)
{
    if (!r) {
        exsa_err_set(err, EXSA_EINVAL, "registry: NULL registry");
        return NULL;
    }
    int by_name = name && name[0];
    exsa_engine *e = NULL;
    pthread_mutex_lock(&r->mu);
    entry *en = by_name ? find(r, name) : r->active;
    if (en && en->state == EXSA_MODEL_READY) {
        en->holders++;
        e = en->engine;
    }
    int loading = en && !e;
    pthread_mutex_unlock(&r->mu);
    if (!e) {
        if (!by_name)
            exsa_err_set(err, EXSA_EINVAL, "registry: no model loaded");
        else
            exsa_err_set(err, EXSA_EINVAL, "registry: model '%.200s' is %s", name,
                         loading ? "still loading" : "not loaded");
    }
    return e;
}

void exsa_registry_release(exsa_registry *r, exsa_engine *e)
{
    if (!r || !e)
        return;
    exsa_engine *to_free = NULL;
    drain *gone = NULL;
    pthread_mutex_lock(&r->mu);
    int found = 0;
    for (entry *en = r->entries; en && !found; en = en->next)
        if (en->engine == e && en->holders > 0) {
            en->holders--;
            found = 1;
        }
    for (drain **pp = &r->drains; *pp && !found; pp = &(*pp)->next)
        if ((*pp)->engine == e) {
            found = 1;
            if (--(*pp)->holders == 0) {
                gone = *pp;
                *pp = gone->next;
                to_free = gone->engine;
            }
            break;
        }
    pthread_mutex_unlock(&r->mu);
    /* The last holder of a retired engine pays for its shutdown. */
    exsa_engine_free(to_free);
    free(gone);
}

static void fill(exsa_registry_entry *o, const char *name, const char *path, int state,
                 int active, int holders)
{
    memcpy(o->name, name, sizeof o->name);
    memcpy(o->path, path, sizeof o->path);
    o->state = state;
    o->active = active;
    o->holders = holders;
}

/* Loaded and loading models in load order, then the draining engines (most
 * recently retired first), so operators can watch them finish. */
int exsa_registry_list(exsa_registry *r, exsa_registry_entry *out, int cap)
{
    if (!r)
        return 0;
    int n = 0;
    pthread_mutex_lock(&r->mu);
    for (entry *en = r->entries; en; en = en->next, n++)
        if (out && n < cap)
            fill(&out[n], en->name, en->path, en->state, en == r->active, en->holders);
    for (drain *d = r->drains; d; d = d->next, n++)
        if (out && n < cap)
            fill(&out[n], d->name, d->path, EXSA_MODEL_DRAINING, 0, d->holders);
    pthread_mutex_unlock(&r->mu);
    return n;
}

int exsa_registry_ready(exsa_registry *r)
{
    if (!r)
        return 0;
    int ready = 0;
    pthread_mutex_lock(&r->mu);
    for (entry *en = r->entries; en && !ready; en = en->next)
        ready = en->state == EXSA_MODEL_READY;
    pthread_mutex_unlock(&r->mu);
    return ready;
}
