"""basf2 steering: reconstruct tau+ -> mu+ mu- mu+ candidates into a flat ntuple.

Run on the batch node as::

    basf2 reco_tau3mu.py -- --output OUT.root --tree tau3mu IN1.mdst.root ...

Reconstruction, in the order of the path:

1. muons with a muon-ID cut and impact-parameter cuts, pions and photons for
   the rest of the event (standard particle lists);
2. ``tau+ -> mu+ mu- mu+`` with 1.3 < M < 2.2 GeV and -1.0 < Delta E < 0.5 GeV,
   where Delta E = E*_3mu - sqrt(s)/2 in the CM frame (basf2's ``deltaE``);
3. a vertex fit of the three muons (KFit), keeping failed fits out;
4. event shape (thrust, Fox-Wolfram moments) and event kinematics (missing
   momentum and missing mass squared) from all tracks and photons;
5. the rest of the event with a cleanup mask for tracks and photons;
6. MC truth matching when ``--mc`` is given, then ``variablesToNtuple``.

NOTE: basf2 cannot be installed here. The tests run this script against
stand-in modules that record the calls; the real check is a run at KEK.
"""

import argparse
import sys

import basf2
import modularAnalysis as ma
import stdCharged
import stdPhotons
import vertex

MUON_CUT = "muonID > {muon_id} and dr < 0.5 and abs(dz) < 2.0 and thetaInCDCAcceptance"
TAU_DECAY = "tau+:3mu -> mu+:tau3mu mu-:tau3mu mu+:tau3mu"
TAU_CUT = "1.3 < M < 2.2 and -1.0 < deltaE < 0.5"
ROE_MASK = (
    "cleanMask",
    "nCDCHits > 0 and dr < 2.0 and abs(dz) < 4.0 and useCMSFrame(p) <= 5.29",
    "E > 0.05 and thetaInCDCAcceptance",
)
EVENT_LISTS = ["pi+:all", "gamma:all"]

CANDIDATE_VARIABLES = [
    "M",
    "deltaE",
    "useCMSFrame(E)",
    "useCMSFrame(p)",
    "charge",
    "chiProb",
    "dr",
    "dz",
    "flightDistance",
]
DAUGHTER_VARIABLES = ["muonID", "p", "pt", "theta", "useCMSFrame(p)", "charge"]
EVENT_VARIABLES = [
    "thrust",
    "foxWolframR2",
    "missingMomentumOfEventCMS",
    "missingMomentumOfEventCMS_theta",
    "missingMass2OfEvent",
    "visibleEnergyOfEventCMS",
    "nTracks",
    "roeE(cleanMask)",
    "roeM(cleanMask)",
    "roeCharge(cleanMask)",
    "nROE_Charged(cleanMask)",
]
TRUTH_VARIABLES = ["isSignal", "mcPDG", "genMotherPDG"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the script arguments (those after ``--`` on the basf2 line)."""
    parser = argparse.ArgumentParser(prog="reco_tau3mu.py")
    parser.add_argument("inputs", nargs="+", help="input mdst files")
    parser.add_argument("--output", required=True, help="output ntuple file")
    parser.add_argument("--tree", default="tau3mu", help="ntuple tree name")
    parser.add_argument(
        "--muon-id", type=float, default=0.5, help="minimum muonID of each muon"
    )
    parser.add_argument("--mc", action="store_true", help="add MC truth variables")
    return parser.parse_args(argv)


def ntuple_variables(mc: bool) -> list[str]:
    """Return the ntuple variables: candidate, each muon, event, truth if ``mc``."""
    variables = list(CANDIDATE_VARIABLES)
    for i in range(3):
        variables += [f"daughter({i}, {name})" for name in DAUGHTER_VARIABLES]
    variables += EVENT_VARIABLES
    if mc:
        variables += TRUTH_VARIABLES
    return variables


def build_path(args: argparse.Namespace) -> "basf2.Path":
    """Create the basf2 path that writes the tau -> 3mu ntuple."""
    path = basf2.create_path()
    ma.inputMdstList(filelist=args.inputs, path=path)

    stdCharged.stdPi("all", path=path)
    stdPhotons.stdPhotons("all", path=path)
    ma.fillParticleList(
        "mu+:tau3mu", cut=MUON_CUT.format(muon_id=args.muon_id), path=path
    )

    ma.reconstructDecay(TAU_DECAY, cut=TAU_CUT, path=path)
    vertex.kFit("tau+:3mu", conf_level=0.0, fit_type="vertex", path=path)

    ma.buildEventShape(
        inputListNames=EVENT_LISTS,
        foxWolfram=True,
        thrust=True,
        harmonicMoments=False,
        cleoCones=False,
        jets=False,
        sphericity=False,
        checkForDuplicates=False,
        path=path,
    )
    ma.buildEventKinematics(inputListNames=EVENT_LISTS, path=path)

    ma.buildRestOfEvent("tau+:3mu", inputListNames=EVENT_LISTS, path=path)
    ma.appendROEMasks("tau+:3mu", [ROE_MASK], path=path)

    if args.mc:
        ma.matchMCTruth("tau+:3mu", path=path)
    ma.variablesToNtuple(
        "tau+:3mu",
        variables=ntuple_variables(args.mc),
        filename=args.output,
        treename=args.tree,
        path=path,
    )
    return path


def main(argv: list[str]) -> None:
    """Build the path from the arguments and process it."""
    args = parse_args(argv)
    path = build_path(args)
    basf2.process(path)
    print(basf2.statistics)  # noqa: T201 - basf2 scripts report on stdout


if __name__ == "__main__":
    main(sys.argv[1:])
