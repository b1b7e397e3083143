using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using MountQcow.Formats;
using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Host;

/// <summary>
/// `mountqcow check IMAGE [--json] [--repair leaks|all]`: qemu-img check's verdict, with its exit
/// codes, for every format qemu-img checks (qcow2, VDI, VHDX, VMDK; repairs for qcow2 only).
/// </summary>
internal static class CheckCommand
{
    public static int Run(CheckOptions o)
    {
        var mode = o.Repair?.ToLowerInvariant() switch
        {
            null => RepairMode.None,
            "leaks" => RepairMode.Leaks,
            "all" => RepairMode.All,
            _ => throw new UsageError($"--repair takes 'leaks' or 'all', not '{o.Repair}'"),
        };
        // The check reads only the image's own structures, but it refuses an image whose names the
        // other verbs would refuse to follow, so that a refusal is the same on every verb.
        if (Refused(o) is { } refused) throw new ReferenceRefusedException(refused);
        CheckReport report;
        try
        {
            report = DiskImages.Check(o.Image, mode, new ImageOptions { ShareWrites = o.ForceShare, References = o.References(), Warn = Cli.Warn });
        }
        catch (UncheckableImageException e)
        {
            Cli.Error(e.Message);
            return UncheckableImageException.ExitStatus; // as qemu-img: "This image format does not support checks"
        }
        foreach (string m in report.Messages) Console.Error.WriteLine(Cli.Printable(m));
        if (report.Failure is { } failure)
        {
            // As qemu-img: the findings, then why the check ended; no summary, no JSON.
            Cli.Error(failure);
            return report.ExitCode;
        }
        if (o.Json) Console.WriteLine(JsonSerializer.Serialize(CheckJson.From(ImageLocation.Display(o.Image), report), CheckJsonContext.Default.CheckJson));
        else Print(report);
        if (report.CheckErrors > 0) Console.Error.WriteLine("mountqcow: the check could not be completed");
        return report.ExitCode;
    }

    private static ImageReference? Refused(CheckOptions o)
    {
        try
        {
            return Qcow2Image.ReferencesOf(o.Image, o.References()).FirstOrDefault(r => !r.Followed);
        }
        catch (ImageException)
        {
            return null; // a header that cannot be read is the check's to report
        }
    }

    private static void Print(CheckReport r)
    {
        if (r.LeaksFixed + r.CorruptionsFixed > 0)
            Console.WriteLine($"The following inconsistencies were found and repaired:\n\n    {r.LeaksFixed} leaked clusters\n    {r.CorruptionsFixed} corruptions\n");
        if (r.Corruptions + r.Leaks + r.CheckErrors == 0) Console.WriteLine("No errors were found on the image.");
        if (r.Corruptions > 0)
            Console.WriteLine($"\n{r.Corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.");
        if (r.Leaks > 0)
            Console.WriteLine($"\n{r.Leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.");
        if (r.CheckErrors > 0) Console.WriteLine($"\n{r.CheckErrors} internal errors have occurred during the check.");
        if (r.TotalClusters > 0 && r.AllocatedClusters > 0)
        {
            string Percent(double part, double whole) => (part * 100 / whole).ToString("0.00", CultureInfo.InvariantCulture);
            Console.WriteLine($"{r.AllocatedClusters}/{r.TotalClusters} = {Percent(r.AllocatedClusters, r.TotalClusters)}% allocated, " +
                              $"{Percent(r.FragmentedClusters, r.AllocatedClusters)}% fragmented, {Percent(r.CompressedClusters, r.AllocatedClusters)}% compressed clusters");
        }
        if (r.ImageEndOffset > 0) Console.WriteLine($"Image end offset: {r.ImageEndOffset}");
    }
}

/// <summary>The JSON of `check --json`, with qemu-img check's field names.</summary>
internal sealed record CheckJson(
    [property: JsonPropertyName("filename")] string Filename,
    [property: JsonPropertyName("format")] string Format,
    [property: JsonPropertyName("check-errors")] int CheckErrors,
    [property: JsonPropertyName("corruptions")] int Corruptions,
    [property: JsonPropertyName("leaks")] int Leaks,
    [property: JsonPropertyName("corruptions-fixed")] int CorruptionsFixed,
    [property: JsonPropertyName("leaks-fixed")] int LeaksFixed,
    [property: JsonPropertyName("image-end-offset")] long ImageEndOffset,
    [property: JsonPropertyName("total-clusters")] long TotalClusters,
    [property: JsonPropertyName("allocated-clusters")] long AllocatedClusters,
    [property: JsonPropertyName("fragmented-clusters")] long FragmentedClusters,
    [property: JsonPropertyName("compressed-clusters")] long CompressedClusters)
{
    public static CheckJson From(string file, CheckReport r) => new(file, r.Format, r.CheckErrors, r.Corruptions, r.Leaks,
        r.CorruptionsFixed, r.LeaksFixed, r.ImageEndOffset, r.TotalClusters, r.AllocatedClusters, r.FragmentedClusters, r.CompressedClusters);
}

[JsonSourceGenerationOptions(WriteIndented = true)]
[JsonSerializable(typeof(CheckJson))]
internal sealed partial class CheckJsonContext : JsonSerializerContext;
