//! Build for Zig 0.17.1 (pinned by the `ziglang` PyPI package; the build API changes between
//! releases). Steps:
//!   zig build              native shared library -> zig-out/lib/libgibsey_vm.so
//!                          aarch64-linux-gnu     -> zig-out/aarch64/libgibsey_vm.so
//!   zig build test         unit tests, native
//!   zig build test-aarch64 unit tests cross-compiled for aarch64-linux-musl, run under
//!                          qemu-aarch64-static (Debian's qemu-user-static)
//! ReleaseSafe by default: assertions and bounds checks stay on in production (TIGER_STYLE).
const std = @import("std");

pub fn build(b: *std.Build) void {
    const optimize = b.option(std.lang.Optimize, "optimize", "Optimization mode") orelse .safe;
    const qemu = b.option([]const u8, "qemu", "qemu user-mode binary for aarch64") orelse "qemu-aarch64-static";
    const native = b.standardTargetOptions(.{});
    const aarch64 = b.resolveTargetQuery(.{ .cpu_arch = .aarch64, .os_tag = .linux, .abi = .gnu });
    const aarch64_musl = b.resolveTargetQuery(.{ .cpu_arch = .aarch64, .os_tag = .linux, .abi = .musl });

    const lib_native = library(b, native, optimize);
    b.installArtifact(lib_native);

    const lib_arm = library(b, aarch64, optimize);
    const install_arm = b.addInstallArtifact(lib_arm, .{
        .dest_dir = .{ .override = .{ .custom = "aarch64" } },
    });
    b.getInstallStep().dependOn(&install_arm.step);

    const test_step = b.step("test", "Run the VM unit tests natively");
    const tests_native = b.addTest(.{ .root_module = module(b, native, .debug) });
    test_step.dependOn(&b.addRunArtifact(tests_native).step);

    const test_arm_step = b.step("test-aarch64", "Run the VM unit tests for aarch64 under qemu");
    const tests_arm = b.addTest(.{ .root_module = module(b, aarch64_musl, .debug) });
    const run_arm = b.addSystemCommand(&.{qemu});
    run_arm.addArtifactArg(tests_arm);
    run_arm.expectExitCode(0);
    // Checking stderr also keeps the runner from reporting the test log as a failure.
    run_arm.expectStdErrMatch(" tests passed.");
    run_arm.has_side_effects = true; // always rerun: the point is to execute on the target
    test_arm_step.dependOn(&run_arm.step);
}

fn module(b: *std.Build, target: std.Build.ResolvedTarget, optimize: std.lang.Optimize) *std.Build.Module {
    return b.createModule(.{
        .root_source_file = b.path("src/vm.zig"),
        .target = target,
        .optimize = optimize,
    });
}

fn library(b: *std.Build, target: std.Build.ResolvedTarget, optimize: std.lang.Optimize) *std.Build.Step.Compile {
    return b.addLibrary(.{
        .name = "gibsey_vm",
        .linkage = .dynamic,
        .root_module = module(b, target, optimize),
    });
}
